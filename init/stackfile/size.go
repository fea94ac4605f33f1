package stackfile

import (
	"fmt"
	"strconv"
	"strings"
)

// Size is a byte count written as "512MiB", "20GiB", "1G" or a plain number.
type Size uint64

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"K", 1000}, {"M", 1000 * 1000}, {"G", 1000 * 1000 * 1000}, {"T", 1000 * 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseSize parses a size with an optional binary or decimal unit.
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	mult := uint64(1)
	num := s
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			mult = u.mult
			num = strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: want a whole number with an optional unit (KiB, MiB, GiB, TiB)", s)
	}
	if n != 0 && n*mult/mult != n {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return Size(n * mult), nil
}

// UnmarshalText parses a size.
func (z *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*z = v
	return nil
}

// MarshalText writes the size in the largest binary unit that divides it.
func (z Size) MarshalText() ([]byte, error) { return []byte(z.String()), nil }

func (z Size) String() string {
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if z != 0 && uint64(z)%u.mult == 0 {
			return strconv.FormatUint(uint64(z)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatUint(uint64(z), 10)
}
