package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/gosheep/gosheep/proto"
)

// shape is one -c value: N copies, or DATA:PARITY erasure coding.
type shape struct{ proto.Redundancy }

func parseShape(s string) (shape, error) {
	r, err := proto.ParseRedundancy(strings.TrimSpace(s))
	if err != nil {
		return shape{}, fmt.Errorf("%q: want N copies or DATA:PARITY such as 4:2: %w", s, err)
	}
	return shape{r}, nil
}

func shapeList(s string) ([]shape, error) {
	var out []shape
	for _, f := range strings.Split(s, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		sh, err := parseShape(f)
		if err != nil {
			return nil, err
		}
		out = append(out, sh)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list")
	}
	return out, nil
}

// copies is a replicated shape of n copies.
func copies(n uint8) shape { return shape{proto.Redundancy{Copies: n}} }

func (s shape) String() string {
	if s.IsEC() {
		return fmt.Sprintf("%d:%d", s.Data, s.Parity)
	}
	return strconv.Itoa(int(s.Copies))
}

// tag names files of this shape's cluster ("3", "4-2").
func (s shape) tag() string { return strings.ReplaceAll(s.String(), ":", "-") }

// describe is the shape in words, for table headings.
func (s shape) describe() string {
	switch {
	case s.IsEC():
		return fmt.Sprintf("erasure coding %d:%d", s.Data, s.Parity)
	case s.Copies == 1:
		return "1 copy"
	}
	return fmt.Sprintf("%d copies", s.Copies)
}

// MarshalJSON keeps replicated shapes numbers, as before erasure coding
// could be measured; erasure-coded ones are strings such as "4:2".
func (s shape) MarshalJSON() ([]byte, error) {
	if s.IsEC() {
		return json.Marshal(s.String())
	}
	return json.Marshal(int(s.Copies))
}

func (s *shape) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		p, err := parseShape(strconv.Itoa(n))
		*s = p
		return err
	}
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return err
	}
	p, err := parseShape(str)
	*s = p
	return err
}
