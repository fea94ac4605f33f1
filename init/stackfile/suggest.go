package stackfile

import (
	"fmt"
	"strings"
)

// hint suggests the valid word closest to a misspelt one, or lists the
// valid words when none is close: ` (did you mean "count"?)`.
func hint(got string, valid []string) string {
	if best, ok := closest(got, valid); ok {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return fmt.Sprintf(" (valid: %s)", strings.Join(valid, ", "))
}

// closest returns the valid word nearest to got by edit distance, if it is
// near enough to be a likely typo: at most a third of the word's letters
// (at least one) differ, ignoring case.
func closest(got string, valid []string) (string, bool) {
	best, bestDist := "", -1
	g := strings.ToLower(got)
	for _, v := range valid {
		d := editDistance(g, strings.ToLower(v))
		if bestDist < 0 || d < bestDist {
			best, bestDist = v, d
		}
	}
	limit := max(1, len([]rune(got))/3)
	if bestDist < 0 || bestDist > limit {
		return "", false
	}
	return best, true
}

// editDistance is the Levenshtein distance between a and b, with adjacent
// transpositions counted as one edit (they are the commonest typo).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	// Three rows suffice for the transposition case.
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}
