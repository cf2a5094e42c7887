package sqlstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// The stream definitions run on both backends like the conformance suite.

func TestStreamsSQLite(t *testing.T) { testStreams(t, openTestSQLite(t)) }

func TestStreamsPostgres(t *testing.T) { testStreams(t, openTestPostgres(t, postgresDSN(t))) }

// TestStreamsSharedPostgres: two stores on one database (two nodes) see each
// other's definitions.
func TestStreamsSharedPostgres(t *testing.T) {
	dsn := freshSchema(t, postgresDSN(t))
	ctx := context.Background()
	a, err := Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := Open(ctx, dsn) // migrations already applied: nothing to do
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := a.CreateStream(ctx, "shop", "key-one-0123456789", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := b.CreateStream(ctx, "shop", "key-two-0123456789", time.Now()); !errors.Is(err, overlay.ErrExists) {
		t.Fatalf("the same name from the other node: %v, want ErrExists", err)
	}
	if err := b.SetStreamKey(ctx, "shop", "key-three-0123456789"); err != nil {
		t.Fatal(err)
	}
	rows, err := a.ListStreams(ctx)
	if err != nil || len(rows) != 1 || rows[0].Key != "key-three-0123456789" {
		t.Fatalf("after the rotation elsewhere: %+v, %v", rows, err)
	}
}

func testStreams(t *testing.T, s *Store) {
	ctx := context.Background()
	if rows, err := s.ListStreams(ctx); err != nil || len(rows) != 0 {
		t.Fatalf("empty store: %+v, %v", rows, err)
	}
	created := time.Date(2025, 3, 4, 5, 6, 7, 891234567, time.FixedZone("x", 3600))
	if err := s.CreateStream(ctx, "zeta", "zeta-key-0123456789", created); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateStream(ctx, "alpha", "alpha-key-0123456789", created.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateStream(ctx, "zeta", "other-key-0123456789", created); !errors.Is(err, overlay.ErrExists) {
		t.Fatalf("duplicate name: %v, want ErrExists", err)
	}
	if err := s.CreateStream(ctx, "", "k", created); err == nil {
		t.Error("empty name accepted")
	}
	rows, err := s.ListStreams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []StreamRow{
		{Name: "alpha", Key: "alpha-key-0123456789", Created: created.Add(time.Hour).UTC().Truncate(time.Microsecond)},
		{Name: "zeta", Key: "zeta-key-0123456789", Created: created.UTC().Truncate(time.Microsecond)},
	}
	if len(rows) != len(want) {
		t.Fatalf("listed %+v, want %+v", rows, want)
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("row %d: %+v, want %+v", i, rows[i], want[i])
		}
	}

	if err := s.SetStreamKey(ctx, "zeta", "rotated-key-0123456789"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetStreamKey(ctx, "nope", "rotated-key-0123456789"); !errors.Is(err, overlay.ErrNotFound) {
		t.Errorf("rotate an unknown stream: %v, want ErrNotFound", err)
	}
	if err := s.DeleteStream(ctx, "alpha"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteStream(ctx, "alpha"); !errors.Is(err, overlay.ErrNotFound) {
		t.Errorf("delete twice: %v, want ErrNotFound", err)
	}
	rows, err = s.ListStreams(ctx)
	if err != nil || len(rows) != 1 || rows[0].Name != "zeta" || rows[0].Key != "rotated-key-0123456789" ||
		!rows[0].Created.Equal(created.Truncate(time.Microsecond)) {
		t.Fatalf("after rotate and delete: %+v, %v", rows, err)
	}
	// The name is free again once deleted.
	if err := s.CreateStream(ctx, "alpha", "alpha-key-0123456789", created); err != nil {
		t.Errorf("re-create a deleted name: %v", err)
	}
}
