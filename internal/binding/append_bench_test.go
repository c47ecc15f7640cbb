package binding

import (
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
)

// BenchmarkAppendSet is the change feed's write of one updated row of a
// string cache: its hot path.
func BenchmarkAppendSet(b *testing.B) {
	tmpl, err := ParseTemplate("p:{id}")
	if err != nil {
		b.Fatal(err)
	}
	bd, err := New(Spec{Name: "p", Table: "p", Key: tmpl, Format: FormatString, Fields: []FieldSpec{{Name: "v", Column: "v"}}},
		[]Column{{Name: "id", TypeOID: 23}, {Name: "v", TypeOID: 25}})
	if err != nil {
		b.Fatal(err)
	}
	rb := testenv.StartRedis(b).Client(b).B() // a builder; the benchmark sends nothing
	row := [][]byte{[]byte("1"), []byte("x")}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bd.AppendSet(nil, rb, "p:1", row, false); err != nil {
			b.Fatal(err)
		}
	}
}
