// Package cmdline parses the kernel command line (/proc/cmdline) the way the
// kernel's own parser splits it: whitespace-separated words, double quotes
// group words (and are removed), `key=value` or bare `flag`, repeated keys
// kept in order, and everything after a lone `--` handed to init as
// arguments.
package cmdline

import (
	"fmt"
	"os"
	"strings"
)

// Prefix namespaces magestack's own keys (magestack.config=, magestack.host=,
// magestack.test.*).
const Prefix = "magestack."

// Param is one word of the command line.
type Param struct {
	Key string `json:"key"`
	// Value is the text after the first '='; empty for a bare flag.
	Value string `json:"value,omitempty"`
	// HasValue tells `key=` (true, empty value) from a bare `key` (false).
	HasValue bool `json:"has_value"`
}

// String renders the parameter so that Parse reads it back unchanged.
func (p Param) String() string {
	if !p.HasValue {
		if p.Key == "--" {
			return `"--"` // unquoted it would end the parameters
		}
		return quoteIfNeeded(p.Key)
	}
	if strings.ContainsAny(p.Key+p.Value, " \t\n\r\v\f") {
		return `"` + p.Key + "=" + p.Value + `"`
	}
	return p.Key + "=" + p.Value
}

func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\n\r\v\f") {
		return `"` + s + `"`
	}
	return s
}

// Cmdline is a parsed kernel command line.
type Cmdline struct {
	Raw    string  `json:"raw"`
	Params []Param `json:"params"`
	// InitArgs are the words after a lone "--", which the kernel passes to
	// init as its arguments.
	InitArgs []string `json:"init_args,omitempty"`
}

// Read parses /proc/cmdline.
func Read() (*Cmdline, error) {
	return ReadFile("/proc/cmdline")
}

// ReadFile parses a file holding a kernel command line.
func ReadFile(path string) (*Cmdline, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kernel command line: %w", err)
	}
	return Parse(string(b)), nil
}

// Parse splits a kernel command line. It never fails: the kernel accepts any
// text, so do we; an unbalanced quote runs to the end of the line.
func Parse(s string) *Cmdline {
	c := &Cmdline{Raw: strings.TrimRight(s, "\n")}
	words := split(s)
	for i, w := range words {
		if w.text == "--" && !w.quoted {
			c.InitArgs = make([]string, 0, len(words)-i-1)
			for _, a := range words[i+1:] {
				c.InitArgs = append(c.InitArgs, a.text)
			}
			break
		}
		key, value, hasValue := strings.Cut(w.text, "=")
		if key == "" && !hasValue {
			continue
		}
		c.Params = append(c.Params, Param{Key: key, Value: value, HasValue: hasValue})
	}
	return c
}

type word struct {
	text   string
	quoted bool
}

// split cuts at unquoted whitespace and drops the quote characters, as the
// kernel's next_arg does for the common forms `"a b"` and `k="a b"`.
func split(s string) []word {
	var (
		out     []word
		cur     strings.Builder
		inWord  bool
		inQuote bool
		quoted  bool
	)
	flush := func() {
		if inWord {
			out = append(out, word{text: cur.String(), quoted: quoted})
		}
		cur.Reset()
		inWord, quoted = false, false
	}
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord, quoted = true, true
		case !inQuote && isSpace(r):
			flush()
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	flush()
	return out
}

func isSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f'
}

// Get returns the value of the last occurrence of key (the kernel's rule:
// later settings override earlier ones) and whether key is present at all.
func (c *Cmdline) Get(key string) (string, bool) {
	for i := len(c.Params) - 1; i >= 0; i-- {
		if c.Params[i].Key == key {
			return c.Params[i].Value, true
		}
	}
	return "", false
}

// Value is Get without the presence flag.
func (c *Cmdline) Value(key string) string {
	v, _ := c.Get(key)
	return v
}

// All returns every value given for key, in order (console= may repeat).
func (c *Cmdline) All(key string) []string {
	var vs []string
	for _, p := range c.Params {
		if p.Key == key {
			vs = append(vs, p.Value)
		}
	}
	return vs
}

// Has reports whether key appears, as a flag or with a value.
func (c *Cmdline) Has(key string) bool {
	_, ok := c.Get(key)
	return ok
}

// Magestack returns magestack's own keys with the "magestack." prefix
// removed; the last occurrence of a key wins.
func (c *Cmdline) Magestack() map[string]string {
	m := map[string]string{}
	for _, p := range c.Params {
		if k, ok := strings.CutPrefix(p.Key, Prefix); ok && k != "" {
			m[k] = p.Value
		}
	}
	return m
}

// String renders the parsed line; Parse(c.String()) yields the same params.
func (c *Cmdline) String() string {
	parts := make([]string, 0, len(c.Params)+1+len(c.InitArgs))
	for _, p := range c.Params {
		parts = append(parts, p.String())
	}
	if c.InitArgs != nil {
		parts = append(parts, "--")
		for _, a := range c.InitArgs {
			parts = append(parts, quoteIfNeeded(a))
		}
	}
	return strings.Join(parts, " ")
}
