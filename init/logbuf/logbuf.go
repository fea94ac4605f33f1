// Package logbuf keeps a service's output: every line timestamped, the most
// recent ones in a memory ring bounded in bytes, all of them in size-rotated
// files (name.log, name.log.1 .. name.log.N), and followable by subscribers.
package logbuf

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Defaults for zero Options fields.
const (
	DefaultRingBytes = 256 << 10
	DefaultFileBytes = 1 << 20
	DefaultFiles     = 3
	// MaxLine is the longest line kept whole; longer ones are split.
	MaxLine = 16 << 10
	// lineOverhead approximates the memory of a Line beyond its text.
	lineOverhead = 48
)

// Line is one line of output.
type Line struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"` // "stdout", "stderr" or "supervisor"
	Text   string    `json:"text"`
}

// String formats the line the way it is written to files.
func (l Line) String() string {
	return l.Time.UTC().Format("2006-01-02T15:04:05.000000Z") + " " + l.Stream + " " + l.Text
}

// Options configure a Log. A zero Path keeps lines in memory only.
type Options struct {
	RingBytes int    // memory kept for Tail and new followers
	Path      string // file the lines are appended to; rotated to Path.1 ..
	FileBytes int64  // rotate when the file would grow past this
	Files     int    // rotated files kept (Path.1 .. Path.Files)
}

// Log is safe for concurrent use.
type Log struct {
	opts Options

	mu        sync.Mutex
	ring      []Line
	head      int // index of the oldest live line in ring
	ringBytes int
	subs      map[*subscriber]struct{}
	file      *os.File
	fileSize  int64
	fileErr   error // the last file error, reported once via Err
	closed    bool
}

type subscriber struct {
	ch      chan Line
	dropped int
}

// New returns a Log; it creates the directory of opts.Path if needed.
func New(opts Options) (*Log, error) {
	if opts.RingBytes <= 0 {
		opts.RingBytes = DefaultRingBytes
	}
	if opts.FileBytes <= 0 {
		opts.FileBytes = DefaultFileBytes
	}
	if opts.Files <= 0 {
		opts.Files = DefaultFiles
	}
	l := &Log{opts: opts, subs: map[*subscriber]struct{}{}}
	if opts.Path != "" {
		if err := os.MkdirAll(filepath.Dir(opts.Path), 0o750); err != nil {
			return nil, fmt.Errorf("log directory for %s: %w", opts.Path, err)
		}
		if err := l.openFile(); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *Log) openFile() error {
	f, err := os.OpenFile(l.opts.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("open log %s: %w", l.opts.Path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat log %s: %w", l.opts.Path, err)
	}
	l.file, l.fileSize = f, st.Size()
	return nil
}

// rotate shifts name.log.(N-1) → name.log.N ... name.log → name.log.1.
func (l *Log) rotate() error {
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
	p := l.opts.Path
	for i := l.opts.Files - 1; i >= 1; i-- {
		err := os.Rename(fmt.Sprintf("%s.%d", p, i), fmt.Sprintf("%s.%d", p, i+1))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate %s.%d: %w", p, i, err)
		}
	}
	if err := os.Rename(p, p+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rotate %s: %w", p, err)
	}
	return l.openFile()
}

// Append records one line (split if longer than MaxLine).
func (l *Log) Append(stream, text string) {
	for len(text) > MaxLine {
		l.add(Line{Stream: stream, Text: text[:MaxLine]})
		text = text[MaxLine:]
	}
	l.add(Line{Stream: stream, Text: text})
}

// Printf records a line from the supervisor itself.
func (l *Log) Printf(format string, args ...any) {
	l.Append("supervisor", fmt.Sprintf(format, args...))
}

func (l *Log) add(line Line) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	// Stamped under the lock, so the ring and the files are in time order
	// even with stdout and stderr read concurrently.
	line.Time = time.Now()
	l.ring = append(l.ring, line)
	l.ringBytes += len(line.Text) + lineOverhead
	for l.ringBytes > l.opts.RingBytes && l.head < len(l.ring)-1 {
		l.ringBytes -= len(l.ring[l.head].Text) + lineOverhead
		l.ring[l.head] = Line{}
		l.head++
	}
	// Compact once half the slice is dead, so memory stays bounded.
	if l.head > 64 && l.head*2 > len(l.ring) {
		n := copy(l.ring, l.ring[l.head:])
		clear(l.ring[n:])
		l.ring = l.ring[:n]
		l.head = 0
	}
	l.writeFile(line)
	for s := range l.subs {
		if s.dropped > 0 {
			// Tell the follower what it missed before it sees the next line.
			marker := Line{Time: line.Time, Stream: "supervisor", Text: fmt.Sprintf("[%d lines dropped: follower too slow]", s.dropped)}
			select {
			case s.ch <- marker:
				s.dropped = 0
			default:
				s.dropped++
				continue
			}
		}
		select {
		case s.ch <- line:
		default:
			s.dropped++ // a slow follower loses lines rather than stalling the service
		}
	}
}

func (l *Log) writeFile(line Line) {
	if l.opts.Path == "" {
		return
	}
	b := []byte(line.String() + "\n")
	if l.file == nil || l.fileSize+int64(len(b)) > l.opts.FileBytes && l.fileSize > 0 {
		if err := l.rotate(); err != nil {
			l.fileErr = err
			return
		}
	}
	n, err := l.file.Write(b)
	l.fileSize += int64(n)
	if err != nil {
		l.fileErr = fmt.Errorf("write log %s: %w", l.opts.Path, err)
	}
}

// Err returns and clears the last file error (lines are still kept in memory).
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.fileErr
	l.fileErr = nil
	return err
}

// Tail returns up to n of the most recent lines (all kept when n <= 0).
func (l *Log) Tail(n int) []Line {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tailLocked(n)
}

func (l *Log) tailLocked(n int) []Line {
	live := l.ring[l.head:]
	if n > 0 && n < len(live) {
		live = live[len(live)-n:]
	}
	return append([]Line(nil), live...)
}

// Follow returns up to n recent lines and a channel of every later line,
// with no gap between them. cancel ends the subscription and closes the
// channel; Close of the Log closes it too.
func (l *Log) Follow(n, buffer int) (recent []Line, lines <-chan Line, cancel func()) {
	if buffer <= 0 {
		buffer = 1024
	}
	s := &subscriber{ch: make(chan Line, buffer)}
	l.mu.Lock()
	recent = l.tailLocked(n)
	if l.closed {
		close(s.ch)
	} else {
		l.subs[s] = struct{}{}
	}
	l.mu.Unlock()
	var once sync.Once
	return recent, s.ch, func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if _, ok := l.subs[s]; ok {
				delete(l.subs, s)
				close(s.ch)
			}
		})
	}
}

// ReadFrom appends every line read from r under stream until r ends.
func (l *Log) ReadFrom(stream string, r io.Reader) error {
	br := bufio.NewReaderSize(r, 4096)
	var partial []byte
	for {
		chunk, err := br.ReadSlice('\n')
		partial = append(partial, chunk...)
		full := len(partial) > 0 && partial[len(partial)-1] == '\n'
		ended := err != nil && !errors.Is(err, bufio.ErrBufferFull)
		if full || len(partial) >= MaxLine || (ended && len(partial) > 0) {
			text := string(partial)
			if full {
				text = text[:len(text)-1]
			}
			l.Append(stream, text)
			partial = partial[:0]
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF), errors.Is(err, os.ErrClosed):
			return nil
		default:
			return err
		}
	}
}

// Close flushes and closes the file and ends every follower.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	for s := range l.subs {
		close(s.ch)
		delete(l.subs, s)
	}
	if l.file != nil {
		return l.file.Close()
	}
	return nil
}
