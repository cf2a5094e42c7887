package signaling

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/overlay/sqlstore"
)

// The store backend needs no adapter.
var _ StreamStore = (*sqlstore.Store)(nil)

func testNewStream(t *testing.T) func(name string) *media.Stream {
	mm := media.NewMetrics(prometheus.NewRegistry())
	log := slog.New(slog.DiscardHandler)
	return func(name string) *media.Stream { return media.NewStream(name, media.StreamOptions{}, mm, log) }
}

// streamsSchema returns VITRINE_TEST_POSTGRES pointed at a new schema,
// dropped when the test ends; without it the test is skipped (in CI it
// fails).
func streamsSchema(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("VITRINE_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("VITRINE_TEST_POSTGRES is empty in CI: start PostgreSQL with .ci/postgres.sh")
		}
		t.Skip("VITRINE_TEST_POSTGRES not set; start one with: export VITRINE_TEST_POSTGRES=$(.ci/postgres.sh start)")
	}
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	schema := "streams_" + strings.ToLower(rand.Text())
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec("DROP SCHEMA " + schema + " CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// storeNode is one node's Streams on the shared database.
func storeNode(t *testing.T, dsn string) (*Streams, *atomic.Int32) {
	t.Helper()
	db, err := sqlstore.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := OpenStreamsInStore(context.Background(), db, testNewStream(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	var changes atomic.Int32
	s.SetOnChange(func() { changes.Add(1) })
	return s, &changes
}

// TestStreamsInStoreTwoNodes: two nodes on one PostgreSQL database. A
// stream made on one is found on the other, a key rotated on one stops
// working on the other once it reloaded, a stream deleted on one is gone
// from the other, its media closed.
func TestStreamsInStoreTwoNodes(t *testing.T) {
	dsn := streamsSchema(t)
	ctx := context.Background()
	a, aChanges := storeNode(t, dsn)
	b, bChanges := storeNode(t, dsn)

	made, err := a.Create("shop", "")
	if err != nil {
		t.Fatal(err)
	}
	if n := aChanges.Load(); n != 1 {
		t.Errorf("OnChange called %d times after a create, want 1", n)
	}
	// b has not reloaded: its Get looks in the store.
	d, bMedia, ok := b.Get("shop")
	if !ok || bMedia == nil || !d.CheckKey(made.Key) || !d.Created.Equal(made.Created) {
		t.Fatalf("the other node's Get: %+v, %v, %v; want %+v with its media", d, bMedia, ok, made)
	}
	if _, err := b.Create("shop", ""); !errors.Is(err, ErrStreamExists) {
		t.Errorf("the same name on the other node: %v, want ErrStreamExists", err)
	}

	rotated, err := a.SetKey("shop", "")
	if err != nil {
		t.Fatal(err)
	}
	if d, _, _ := a.Get("shop"); d.CheckKey(made.Key) || !d.CheckKey(rotated.Key) {
		t.Error("the node that rotated still takes the old key")
	}
	if err := b.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	d, st, ok := b.Get("shop")
	if !ok || d.CheckKey(made.Key) || !d.CheckKey(rotated.Key) {
		t.Fatalf("after the rotation and a reload, the other node has %+v: the old key must fail, the new one work", d)
	}
	if st != bMedia {
		t.Error("a rotation replaced the media (the creator's session must go on)")
	}

	if err := a.Delete("shop"); err != nil {
		t.Fatal(err)
	}
	if n := aChanges.Load(); n != 3 {
		t.Errorf("OnChange called %d times after create, rotate and delete, want 3", n)
	}
	if err := b.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := b.Get("shop"); ok {
		t.Error("a stream deleted on the other node is still here after a reload")
	}
	if state, _ := bMedia.State(); state != media.StateEnded {
		t.Errorf("the deleted stream's media here is %s, want ended", state)
	}
	if len(b.List()) != 0 {
		t.Errorf("b lists %+v", b.List())
	}
	if n := bChanges.Load(); n != 0 {
		t.Errorf("reloads and refused changes called b's OnChange %d times", n)
	}

	// Deleted and made again on one node: the other gets new media at its
	// reload, and a rotation from a node that never saw the stream works.
	if _, err := a.Create("again", ""); err != nil {
		t.Fatal(err)
	}
	// (b's Get reloaded for "shop" less than a second ago: it would not
	// look again yet.)
	if err := b.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	_, old, ok := b.Get("again")
	if !ok {
		t.Fatal("b did not learn a second stream")
	}
	if err := a.Delete("again"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Create("again", ""); err != nil {
		t.Fatal(err)
	}
	if err := b.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, st, _ := b.Get("again"); st == old || st == nil {
		t.Error("a stream made again elsewhere kept its old media here")
	}
	if state, _ := old.State(); state != media.StateEnded {
		t.Errorf("the media of the deleted incarnation is %s, want ended", state)
	}
	if _, err := a.Create("third", ""); err != nil {
		t.Fatal(err)
	}
	got, err := b.SetKey("third", "")
	if err != nil {
		t.Fatalf("rotate on the node that has not seen the stream: %v", err)
	}
	if d, _, ok := b.Get("third"); !ok || !d.CheckKey(got.Key) {
		t.Errorf("after the rotation b has %+v, %v", d, ok)
	}
	// Delete on b of a stream a already deleted: unknown, and gone from b.
	if err := a.Delete("third"); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete("third"); !errors.Is(err, ErrStreamUnknown) {
		t.Errorf("delete of a stream deleted elsewhere: %v, want ErrStreamUnknown", err)
	}
	if _, _, ok := b.get("third"); ok {
		t.Error("b kept a stream deleted elsewhere after its own delete failed")
	}
}

// TestStreamsInStoreRestart: the definitions outlive the node.
func TestStreamsInStoreRestart(t *testing.T) {
	dsn := streamsSchema(t)
	a, _ := storeNode(t, dsn)
	made, err := a.Create("shop", "restart-key-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b, _ := storeNode(t, dsn)
	if got := b.List(); len(got) != 1 || got[0] != made {
		t.Fatalf("after a restart: %+v, want %+v", got, made)
	}
}

// memStreamStore is a StreamStore in memory that counts its reads.
type memStreamStore struct {
	mu    sync.Mutex
	rows  map[string]StreamRow
	lists atomic.Int32
	fail  error
}

func newMemStreamStore() *memStreamStore { return &memStreamStore{rows: map[string]StreamRow{}} }

func (m *memStreamStore) ListStreams(context.Context) ([]StreamRow, error) {
	m.lists.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	var out []StreamRow
	for _, r := range m.rows {
		out = append(out, r)
	}
	return out, nil
}

func (m *memStreamStore) CreateStream(_ context.Context, name, key string, created time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	if _, ok := m.rows[name]; ok {
		return fmt.Errorf("create stream %s: %w", name, overlay.ErrExists)
	}
	m.rows[name] = StreamRow{Name: name, Key: key, Created: created.UTC().Truncate(time.Microsecond)}
	return nil
}

func (m *memStreamStore) SetStreamKey(_ context.Context, name, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	r, ok := m.rows[name]
	if !ok {
		return overlay.ErrNotFound
	}
	r.Key = key
	m.rows[name] = r
	return nil
}

func (m *memStreamStore) DeleteStream(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	if _, ok := m.rows[name]; !ok {
		return overlay.ErrNotFound
	}
	delete(m.rows, name)
	return nil
}

// TestStreamsGetMissBounded: unknown names reload at most once a second,
// and names that cannot exist never.
func TestStreamsGetMissBounded(t *testing.T) {
	db := newMemStreamStore()
	s, err := OpenStreamsInStore(context.Background(), db, testNewStream(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	base := db.lists.Load()
	if _, _, ok := s.Get("Not A Name"); ok {
		t.Fatal("found an impossible name")
	}
	if n := db.lists.Load() - base; n != 0 {
		t.Errorf("an impossible name read the store %d times", n)
	}
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Get(fmt.Sprintf("unknown-%d", i))
		}()
	}
	wg.Wait()
	if n := db.lists.Load() - base; n != 1 {
		t.Errorf("200 unknown names within a second read the store %d times, want 1", n)
	}
	// Made elsewhere: found once the second has passed.
	db.CreateStream(context.Background(), "later", "later-key-0123456789", time.Now())
	if _, _, ok := s.Get("later"); ok {
		t.Error("a second reload within the second")
	}
	time.Sleep(missReloadEvery + 50*time.Millisecond)
	if _, _, ok := s.Get("later"); !ok {
		t.Error("a stream made elsewhere not found after the second")
	}
}

// TestStreamsStoreFailure: a change the store refuses changes nothing here
// and tells nobody.
func TestStreamsStoreFailure(t *testing.T) {
	db := newMemStreamStore()
	s, err := OpenStreamsInStore(context.Background(), db, testNewStream(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	var changes atomic.Int32
	s.SetOnChange(func() { changes.Add(1) })
	made, err := s.Create("shop", "")
	if err != nil {
		t.Fatal(err)
	}
	db.mu.Lock()
	db.fail = errors.New("database down")
	db.mu.Unlock()
	if _, err := s.Create("other", ""); err == nil {
		t.Error("create succeeded with the store down")
	}
	if _, err := s.SetKey("shop", ""); err == nil {
		t.Error("rotation succeeded with the store down")
	}
	if err := s.Delete("shop"); err == nil {
		t.Error("delete succeeded with the store down")
	}
	if err := s.Reload(context.Background()); err == nil {
		t.Error("reload succeeded with the store down")
	}
	if got := s.List(); len(got) != 1 || got[0] != made {
		t.Errorf("after refused changes: %+v, want only %+v", got, made)
	}
	if n := changes.Load(); n != 1 {
		t.Errorf("OnChange called %d times, want 1 (the create)", n)
	}
}

// TestImportStreamsFile: a single node's streams.json moves into an empty
// store once, keys and times kept; the file is then renamed.
func TestImportStreamsFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "streams.json")
	file, err := OpenStreams(path, testNewStream(t))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := file.Create("alpha", "alpha-key-0123456789")
	b, _ := file.Create("beta", "")
	file.Close()

	db := newMemStreamStore()
	if n, err := ImportStreamsFile(ctx, db, filepath.Join(dir, "missing.json")); n != 0 || err != nil {
		t.Fatalf("missing file: %d, %v", n, err)
	}
	n, err := ImportStreamsFile(ctx, db, path)
	if n != 2 || err != nil {
		t.Fatalf("import: %d, %v; want 2", n, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("streams.json still there after the import: %v", err)
	}
	if _, err := os.Stat(path + ".imported"); err != nil {
		t.Errorf("no streams.json.imported: %v", err)
	}
	s, err := OpenStreamsInStore(ctx, db, testNewStream(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	for _, want := range []StreamDef{a, b} {
		got, st, ok := s.Get(want.Name)
		if !ok || st == nil || got.Key != want.Key || !got.Created.Equal(want.Created.Truncate(time.Microsecond)) {
			t.Errorf("imported %+v, want %+v", got, want)
		}
	}

	// A store that has definitions takes nothing from a file.
	data, _ := json.Marshal([]StreamDef{{Name: "gamma", Key: "gamma-key-0123456789", Created: time.Now()}})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := ImportStreamsFile(ctx, db, path); n != 0 || err != nil {
		t.Errorf("import into a store with definitions: %d, %v; want 0", n, err)
	}
	if _, ok := db.rows["gamma"]; ok {
		t.Error("gamma imported into a store that had definitions")
	}
}

// TestStreamsFileReload: the file backend is unchanged and Reload does
// nothing.
func TestStreamsFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "streams.json")
	s, err := OpenStreams(path, testNewStream(t))
	if err != nil {
		t.Fatal(err)
	}
	var changes atomic.Int32
	s.SetOnChange(func() { changes.Add(1) })
	made, err := s.Create("shop", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("shop", ""); !errors.Is(err, ErrStreamExists) {
		t.Errorf("duplicate: %v", err)
	}
	rotated, err := s.SetKey("shop", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("gone", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("gone"); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := changes.Load(); n != 4 {
		t.Errorf("OnChange called %d times, want 4", n)
	}
	s.Close()
	again, err := OpenStreams(path, testNewStream(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(again.Close)
	got := again.List()
	if len(got) != 1 || got[0].Name != "shop" || got[0].Key != rotated.Key || !got[0].Created.Equal(made.Created) {
		t.Errorf("reopened file: %+v", got)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("streams.json: %v, %v; want mode 0600", info, err)
	}
}
