package stackfile

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Pos is a place in a stack file (1-based; Column 0 when unknown).
type Pos struct{ Line, Column int }

// FieldError is one problem found in a stack file: where it is, which field,
// and what is wrong.
type FieldError struct {
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
	Col  int    `json:"column,omitempty"`
	// Path is the field, e.g. roles.web.count or hosts[1].mac (list indexes
	// are 0-based); empty for the whole document.
	Path string `json:"path,omitempty"`
	Msg  string `json:"message"`
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Col > 0 {
			fmt.Fprintf(&b, ":%d", e.Col)
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// FieldErrors flattens an error returned by Parse or Validate into its
// positioned problems, in file order. Errors that are not FieldErrors are
// returned as FieldErrors with only Msg set.
func FieldErrors(err error) []*FieldError {
	if err == nil {
		return nil
	}
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if fe, ok := e.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		if m, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range m.Unwrap() {
				walk(x)
			}
			return
		}
		var fe *FieldError
		if errors.As(e, &fe) {
			out = append(out, fe)
			return
		}
		out = append(out, &FieldError{Msg: e.Error()})
	}
	walk(err)
	return out
}

// sortErrors orders problems by position so the file reads top to bottom;
// problems without a position keep their relative order at the end.
func sortErrors(errs []*FieldError) {
	sort.SliceStable(errs, func(i, j int) bool {
		a, b := errs[i], errs[j]
		if (a.Line == 0) != (b.Line == 0) {
			return a.Line != 0
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

// maxErrors bounds the list of problems reported for one file.
const maxErrors = 100

func joinErrors(errs []*FieldError) error {
	if len(errs) == 0 {
		return nil
	}
	sortErrors(errs)
	if len(errs) > maxErrors {
		more := len(errs) - maxErrors
		errs = append(errs[:maxErrors:maxErrors], &FieldError{File: errs[0].File, Msg: fmt.Sprintf("%d more problems not shown", more)})
	}
	list := make([]error, len(errs))
	for i, e := range errs {
		list[i] = e
	}
	return errors.Join(list...)
}

// source remembers where a parsed stack came from so that semantic checks
// can point at the line of the offending field.
type source struct {
	file string
	pos  map[string]Pos // field path -> position of its key (or list item)
}

// has reports whether path was written in the file (as opposed to defaulted).
func (s *source) has(path string) bool {
	if s == nil {
		return false
	}
	_, ok := s.pos[path]
	return ok
}

// at returns the position of path, or of its nearest written ancestor.
func (s *source) at(path string) Pos {
	if s == nil {
		return Pos{}
	}
	for {
		if p, ok := s.pos[path]; ok {
			return p
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return s.pos[""]
		}
		path = path[:i]
	}
}

// maxNodes bounds the work of decoding one document, so a file built from
// nested aliases cannot make PID 1 spin or exhaust memory.
const maxNodes = 200000

// decoder turns a yaml.Node tree into Go values strictly: every key must be
// a known field, every scalar must have the field's type. It keeps going
// after a problem so one run reports all of them.
type decoder struct {
	src   *source
	errs  []*FieldError
	nodes int
}

func (d *decoder) failAt(n *yaml.Node, path, format string, args ...any) {
	e := &FieldError{File: d.src.file, Path: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Col = n.Line, n.Column
	}
	d.errs = append(d.errs, e)
}

var (
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	prefixType      = reflect.TypeFor[netip.Prefix]()
	addrType        = reflect.TypeFor[netip.Addr]()
	sizeType        = reflect.TypeFor[Size]()
	durationType    = reflect.TypeFor[Duration]()
)

// expected names what a field of type t must hold, for error messages.
func expected(t reflect.Type) string {
	switch t {
	case prefixType:
		return "an address with prefix length (like 192.0.2.10/24)"
	case addrType:
		return "an IP address"
	case sizeType:
		return "a size (like 512MiB or 20GiB)"
	case durationType:
		return "a duration (like 100ms, 1s, 2m)"
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		return "a mapping"
	case reflect.Slice:
		return "a list"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Pointer:
		return expected(t.Elem())
	}
	return t.String()
}

// describe names what a node holds, for "got ..." in error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		switch n.ShortTag() {
		case "!!int", "!!float":
			return "number " + v
		case "!!bool":
			return "boolean " + v
		default:
			return strconv.Quote(v)
		}
	}
	return "something else"
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// decode stores node n, found at path, into v.
func (d *decoder) decode(n *yaml.Node, path string, v reflect.Value) {
	d.nodes++
	if d.nodes > maxNodes {
		if d.nodes == maxNodes+1 {
			d.failAt(n, path, "document too large or too deeply aliased (more than %d nodes)", maxNodes)
		}
		return
	}
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			d.failAt(n, path, "alias to an unknown anchor")
			return
		}
		n = n.Alias
		d.nodes++
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	if isNull(n) {
		return // an empty value keeps the zero value, which defaults fill in
	}
	t := v.Type()
	if t.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		d.decode(n, path, v.Elem())
		return
	}
	if reflect.PointerTo(t).Implements(textUnmarshaler) {
		if n.Kind != yaml.ScalarNode {
			d.failAt(n, path, "expected %s, got %s", expected(t), describe(n))
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.failAt(n, path, "expected %s, got %s", expected(t), describe(n))
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, path, v)
	case reflect.Map:
		d.decodeMap(n, path, v)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.failAt(n, path, "expected %s, got %s", expected(t), describe(n))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.src.pos[p] = Pos{item.Line, item.Column}
			d.decode(item, p, s.Index(i))
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.failAt(n, path, "expected %s, got %s", expected(t), describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			d.failAt(n, path, "expected %s, got %s", expected(t), describe(n))
			return
		}
		b, err := strconv.ParseBool(strings.ToLower(n.Value))
		if err != nil {
			d.failAt(n, path, "expected %s, got %s", expected(t), describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			d.failAt(n, path, "expected %s, got %s", expected(t), describe(n))
			return
		}
		bits := t.Bits()
		i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, bits)
		if err != nil {
			lo, hi := -int64(1)<<(bits-1), int64(math.MaxInt64>>(64-bits))
			d.failAt(n, path, "%s is out of range %d..%d", n.Value, lo, hi)
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			d.failAt(n, path, "expected %s, got %s", expected(t), describe(n))
			return
		}
		bits := t.Bits()
		u, err := strconv.ParseUint(strings.ReplaceAll(n.Value, "_", ""), 0, bits)
		if err != nil {
			d.failAt(n, path, "%s is out of range 0..%d", n.Value, uint64(math.MaxUint64)>>(64-bits))
			return
		}
		v.SetUint(u)
	default:
		d.failAt(n, path, "cannot decode into %s", t) // a schema bug, caught by tests
	}
}

// field is one key a struct accepts.
type field struct {
	key   string
	index int
}

func structFields(t reflect.Type) []field {
	var out []field
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if key == "-" {
			continue
		}
		if key == "" {
			key = strings.ToLower(f.Name)
		}
		out = append(out, field{key, i})
	}
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// mappingKeys walks a mapping's key/value pairs, reporting keys that are not
// plain scalars, merge keys and duplicates; fn gets each usable pair.
func (d *decoder) mappingKeys(n *yaml.Node, path string, fn func(key string, k, val *yaml.Node)) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.failAt(k, path, "a key must be a plain word, got %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			d.failAt(k, path, "YAML merge keys (<<) are not supported: write the fields out")
			continue
		}
		if seen[k.Value] {
			d.failAt(k, join(path, k.Value), "key written twice")
			continue
		}
		seen[k.Value] = true
		fn(k.Value, k, val)
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, path string, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		hint := ""
		if v.Type() == reflect.TypeFor[Role]() && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
			hint = fmt.Sprintf(" (write {count: %s})", n.Value)
		}
		d.failAt(n, path, "expected %s, got %s%s", expected(v.Type()), describe(n), hint)
		return
	}
	fields := structFields(v.Type())
	d.mappingKeys(n, path, func(key string, k, val *yaml.Node) {
		p := join(path, key)
		for _, f := range fields {
			if f.key == key {
				d.src.pos[p] = Pos{k.Line, k.Column}
				d.decode(val, p, v.Field(f.index))
				return
			}
		}
		keys := make([]string, len(fields))
		for i, f := range fields {
			keys[i] = f.key
		}
		d.failAt(k, p, "unknown key%s", hint(key, keys))
	})
}

func (d *decoder) decodeMap(n *yaml.Node, path string, v reflect.Value) {
	t := v.Type()
	if n.Kind != yaml.MappingNode {
		d.failAt(n, path, "expected %s, got %s", expected(t), describe(n))
		return
	}
	if t.Key().Kind() != reflect.String {
		d.failAt(n, path, "cannot decode into %s", t)
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(t))
	}
	d.mappingKeys(n, path, func(key string, k, val *yaml.Node) {
		p := join(path, key)
		d.src.pos[p] = Pos{k.Line, k.Column}
		e := reflect.New(t.Elem()).Elem()
		d.decode(val, p, e)
		v.SetMapIndex(reflect.ValueOf(key).Convert(t.Key()), e)
	})
}

var yamlLineErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 parse error into a positioned FieldError.
func syntaxError(file string, err error) *FieldError {
	msg := err.Error()
	if m := yamlLineErr.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &FieldError{File: file, Line: line, Msg: "YAML syntax: " + m[2]}
	}
	return &FieldError{File: file, Msg: "YAML syntax: " + strings.TrimPrefix(msg, "yaml: ")}
}
