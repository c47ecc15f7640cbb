package pgsource

import (
	"testing"

	"github.com/jackc/pglogrepl"
)

func TestPageStart(t *testing.T) {
	const page, segment = 8192, 16 << 20
	for _, tc := range []struct{ pos, want uint64 }{
		{3*page + 24, 3 * page},       // past a page's header: its start
		{3*page + 48, 3*page + 48},    // a record's end on the page
		{3*page + 40, 3*page + 40},    // on a page that is not a segment's first: a record's end
		{2*segment + 40, 2 * segment}, // past a segment's first page's (long) header
		{2*segment + page + 24, 2*segment + page},
		{0, 0},
	} {
		if got := PageStart(pglogrepl.LSN(tc.pos), page, segment); uint64(got) != tc.want {
			t.Errorf("PageStart(%s) = %s, want %s", pglogrepl.LSN(tc.pos), got, pglogrepl.LSN(tc.want))
		}
	}
}
