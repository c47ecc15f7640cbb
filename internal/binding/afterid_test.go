package binding

import "testing"

func TestAfterID(t *testing.T) {
	for _, tc := range []struct{ id, want string }{
		{"1700000000000-0", "1700000000000-1"},
		{"5-41", "5-42"},
		{"5-18446744073709551615", "6-0"},
		{"garbage", "garbage"},
	} {
		if got := AfterID(tc.id); got != tc.want {
			t.Errorf("AfterID(%q) = %q, want %q", tc.id, got, tc.want)
		}
	}
}
