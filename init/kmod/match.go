package kmod

// Match reports whether s matches the modules.alias pattern, with fnmatch(3)
// semantics and no flags (what kmod uses): '*' matches any run of bytes,
// '/' included (path.Match would stop at '/'), '?' one byte, "[...]" a byte
// class with ranges and '!' or '^' negation, and '\' escapes the next byte.
// A malformed class matches its '[' literally, as fnmatch does.
func Match(pattern, s string) bool {
	// Iterative matcher with single-star backtracking: linear in practice,
	// no recursion on hostile patterns.
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		if p < len(pattern) {
			switch c := pattern[p]; c {
			case '*':
				starP, starI = p, i
				p++
				continue
			case '?':
				p++
				i++
				continue
			case '[':
				if ok, next, valid := matchClass(pattern, p, s[i]); valid {
					if ok {
						p, i = next, i+1
						continue
					}
				} else if s[i] == '[' {
					p, i = p+1, i+1
					continue
				}
			case '\\':
				if p+1 < len(pattern) && pattern[p+1] == s[i] {
					p, i = p+2, i+1
					continue
				}
				if p+1 == len(pattern) && s[i] == '\\' {
					p, i = p+1, i+1
					continue
				}
			default:
				if c == s[i] {
					p, i = p+1, i+1
					continue
				}
			}
		}
		if starP >= 0 {
			starI++
			p, i = starP+1, starI
			continue
		}
		return false
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// matchClass matches b against the class starting at pattern[p] == '['. It
// returns whether b is in the class, the index after the class, and whether
// the class is well formed (has its closing ']').
func matchClass(pattern string, p int, b byte) (match bool, next int, valid bool) {
	j := p + 1
	negate := false
	if j < len(pattern) && (pattern[j] == '!' || pattern[j] == '^') {
		negate = true
		j++
	}
	first := true
	for j < len(pattern) {
		c := pattern[j]
		if c == ']' && !first {
			return match != negate, j + 1, true
		}
		first = false
		if c == '\\' && j+1 < len(pattern) {
			j++
			c = pattern[j]
		}
		lo, hi := c, c
		if j+2 < len(pattern) && pattern[j+1] == '-' && pattern[j+2] != ']' {
			hi = pattern[j+2]
			if hi == '\\' && j+3 < len(pattern) {
				hi = pattern[j+3]
				j++
			}
			j += 2
		}
		if lo <= b && b <= hi {
			match = true
		}
		j++
	}
	return false, 0, false
}
