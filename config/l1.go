package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// L1 is a cache's in-process copy of its hits, kept exact by Redis: a
// process that read a key is told by Redis (RESP3 client tracking) when the
// key changes, and drops its copy.
type L1 struct {
	// Max bounds the memory of the copies, per Redis node (default 64MiB).
	Max ByteSize `yaml:"max"`
	// TTL bounds how long a copy is served without asking Redis (default
	// 30s); never longer than the key's own TTL.
	TTL time.Duration `yaml:"ttl"`
}

// Defaults of L1.
const (
	DefaultL1Max = 64 << 20
	DefaultL1TTL = 30 * time.Second
)

// validateL1 checks cc's l1 and fills its defaults.
func validateL1(field string, l *L1) error {
	if l == nil {
		return nil
	}
	switch {
	case l.Max < 0:
		return FieldError(field+".l1.max", "must not be negative")
	case l.Max == 0:
		l.Max = DefaultL1Max
	}
	switch {
	case l.TTL < 0:
		return FieldError(field+".l1.ttl", "must not be negative")
	case l.TTL == 0:
		l.TTL = DefaultL1TTL
	}
	return nil
}

// ByteSize is a size in bytes, written as 1048576, "64MiB", "512KiB", "1GiB"
// (or kB, MB, GB, powers of 1000).
type ByteSize int64

var byteUnits = []struct {
	suffix string
	scale  int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}

// ParseByteSize reads a size as ByteSize's YAML does.
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	scale := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, scale = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.scale
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/scale {
		return 0, fmt.Errorf("not a size like 64MiB")
	}
	return ByteSize(n * scale), nil
}

// UnmarshalYAML parses a size as ParseByteSize does.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is %w", n.Line, n.Value, err)
	}
	*b = v
	return nil
}
