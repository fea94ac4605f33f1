# failures.awk prints, for each failed top-level test in a `go test -v` log,
# the last lines the test itself logged (file.go:line: ...) before its
# "--- FAIL" line, where the error is, without the long dumps that follow
# them, so a CI summary that only keeps the end of the output still says
# why a scenario failed.
function flush_ring(name,   i, n, line) {
	n = (count < keep) ? count : keep
	printf "---- why %s failed (its last %d test lines) ----\n", name, n
	for (i = count - n; i < count; i++) {
		line = ring[i % keep]
		if (length(line) > 400) line = substr(line, 1, 400) " […]"
		print line
	}
}
BEGIN { keep = 12; count = 0 }
/^=== RUN   Test[^\/]+$/ { count = 0; next }
/^--- FAIL: Test/ { flush_ring($3); count = 0; next }
/^ +[A-Za-z0-9_]+\.go:[0-9]+: / { ring[count % keep] = $0; count++ }
