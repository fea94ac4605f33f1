package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// loadSpec is one closed-loop load run: Concurrency clients, each sending
// its next request as soon as the previous answer is read, over kept-alive
// connections, for Duration.
type loadSpec struct {
	URL         string
	Concurrency int
	Duration    time.Duration
	// Dial opens the client's connections (nsdo.DialContext for a client
	// inside a network namespace); nil dials from the caller's namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Want is a substring every good answer's body holds.
	Want string
}

// loadResult is what one run saw: every completed request's latency
// (good answers only) and the failures.
type loadResult struct {
	Elapsed   time.Duration
	Latencies []time.Duration
	Failures  int
	FirstErr  error
}

// latencyStats summarises a run.
type latencyStats struct {
	Requests       int
	Failures       int
	RPS            float64
	P50, P99, Max  time.Duration
	Mean           time.Duration
	ElapsedSeconds float64
	FirstErr       error // the first failure, nil when none
}

// runLoad drives spec against its URL and returns each request's latency.
// A request counts when its whole body was read with status 200 and the
// wanted text; anything else is a failure (the first one is kept).
func runLoad(ctx context.Context, spec loadSpec) (loadResult, error) {
	if spec.Concurrency < 1 || spec.Duration <= 0 {
		return loadResult{}, fmt.Errorf("load: concurrency %d, duration %v: both must be positive", spec.Concurrency, spec.Duration)
	}
	tr := &http.Transport{Proxy: nil, DialContext: spec.Dial, MaxIdleConns: spec.Concurrency,
		MaxIdleConnsPerHost: spec.Concurrency, MaxConnsPerHost: spec.Concurrency, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, spec.Duration)
	defer cancel()

	var (
		mu  sync.Mutex
		res loadResult
		wg  sync.WaitGroup
	)
	start := time.Now()
	for range spec.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each client keeps its own latencies: no lock per request.
			lat := make([]time.Duration, 0, 4096)
			fails := 0
			var firstErr error
			for ctx.Err() == nil {
				t0 := time.Now()
				err := getOnce(ctx, client, spec.URL, spec.Want)
				d := time.Since(t0)
				if err != nil {
					// The run's own end cancels the request in flight:
					// that is neither a success nor a failure.
					if ctx.Err() != nil {
						break
					}
					fails++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				lat = append(lat, d)
			}
			mu.Lock()
			res.Latencies = append(res.Latencies, lat...)
			res.Failures += fails
			if res.FirstErr == nil {
				res.FirstErr = firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res, nil
}

func getOnce(ctx context.Context, c *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	if want != "" && !bytes.Contains(body, []byte(want)) {
		return fmt.Errorf("%s: answer without %q: %.80q", url, want, body)
	}
	return nil
}

// stats summarises r. Requests per second count good answers only.
func (r loadResult) stats() (latencyStats, error) {
	if len(r.Latencies) == 0 {
		err := errors.New("no request answered")
		if r.FirstErr != nil {
			err = fmt.Errorf("no request answered (%d failed, first: %w)", r.Failures, r.FirstErr)
		}
		return latencyStats{Failures: r.Failures}, err
	}
	s := slices.Clone(r.Latencies)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return latencyStats{
		Requests:       len(s),
		Failures:       r.Failures,
		RPS:            float64(len(s)) / r.Elapsed.Seconds(),
		P50:            percentile(s, 50),
		P99:            percentile(s, 99),
		Max:            s[len(s)-1],
		Mean:           sum / time.Duration(len(s)),
		ElapsedSeconds: r.Elapsed.Seconds(),
		FirstErr:       r.FirstErr,
	}, nil
}

// percentile is the nearest-rank percentile of sorted (ascending): the
// smallest value with at least p% of the values at or below it. p is in
// (0, 100]; an empty slice gives 0.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}
