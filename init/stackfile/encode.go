package stackfile

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

var textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()

// encode builds the YAML node of v. It mirrors decode rather than using
// yaml.Marshal, whose omitempty treats every netip value as empty (their
// fields are unexported) and would drop addresses from the output.
func encode(v reflect.Value) (*yaml.Node, error) {
	t := v.Type()
	if t.Kind() == reflect.Pointer {
		if v.IsNil() {
			return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}, nil
		}
		return encode(v.Elem())
	}
	if t.Implements(textMarshaler) {
		b, err := v.Interface().(encoding.TextMarshaler).MarshalText()
		if err != nil {
			return nil, err
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: string(b)}, nil
	}
	switch t.Kind() {
	case reflect.Struct:
		n := &yaml.Node{Kind: yaml.MappingNode}
		for _, f := range structFields(t) {
			fv := v.Field(f.index)
			_, opts, _ := strings.Cut(t.Field(f.index).Tag.Get("yaml"), ",")
			if strings.Contains(opts, "omitempty") && (fv.IsZero() || (fv.Kind() == reflect.Slice || fv.Kind() == reflect.Map) && fv.Len() == 0) {
				continue
			}
			val, err := encode(fv)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f.key, err)
			}
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: f.key}, val)
		}
		return n, nil
	case reflect.Map:
		n := &yaml.Node{Kind: yaml.MappingNode}
		keys := make([]string, 0, v.Len())
		for _, k := range v.MapKeys() {
			keys = append(keys, k.String())
		}
		slices.Sort(keys)
		for _, k := range keys {
			val, err := encode(v.MapIndex(reflect.ValueOf(k).Convert(t.Key())))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k}, val)
		}
		return n, nil
	case reflect.Slice:
		n := &yaml.Node{Kind: yaml.SequenceNode}
		for i := range v.Len() {
			val, err := encode(v.Index(i))
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			n.Content = append(n.Content, val)
		}
		return n, nil
	case reflect.String:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v.String()}, nil
	case reflect.Bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(v.Bool())}, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatInt(v.Int(), 10)}, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatUint(v.Uint(), 10)}, nil
	}
	return nil, fmt.Errorf("cannot encode %s", t)
}

// MarshalYAML makes yaml.Marshal of a Stack produce what Marshal does.
func (s Stack) MarshalYAML() (any, error) { return encode(reflect.ValueOf(s)) }

// MarshalJSONOrdered writes the stack as JSON with the stack file's keys, in the
// file's order (for `magestack config show -o json`).
func (s *Stack) MarshalJSONOrdered() ([]byte, error) {
	n, err := encode(reflect.ValueOf(s).Elem())
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := nodeJSON(&b, n); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func nodeJSON(b *bytes.Buffer, n *yaml.Node) error {
	switch n.Kind {
	case yaml.MappingNode:
		b.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			k, _ := json.Marshal(n.Content[i].Value)
			b.Write(k)
			b.WriteByte(':')
			if err := nodeJSON(b, n.Content[i+1]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	case yaml.SequenceNode:
		b.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := nodeJSON(b, c); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!int", "!!bool":
			b.WriteString(n.Value)
		case "!!null":
			b.WriteString("null")
		default:
			v, err := json.Marshal(n.Value)
			if err != nil {
				return err
			}
			b.Write(v)
		}
	default:
		return fmt.Errorf("cannot write YAML node kind %d as JSON", n.Kind)
	}
	return nil
}
