package signaling

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
)

// StreamDef is what is kept of a stream across restarts: its name and the
// key a creator publishes with.
type StreamDef struct {
	Name    string    `json:"name"`
	Key     string    `json:"key"`
	Created time.Time `json:"created"`
}

// StreamRow is one definition as a StreamStore returns it; StreamDef(row)
// converts it. It is an alias of an unnamed struct, the same type as
// sqlstore.StreamRow, so *sqlstore.Store is a StreamStore without signaling
// importing sqlstore.
type StreamRow = struct {
	Name    string
	Key     string
	Created time.Time
}

// StreamStore holds the definitions of the streams of a cluster in the
// database its nodes share: *sqlstore.Store on PostgreSQL. CreateStream
// returns an error wrapping overlay.ErrExists for a name already there;
// SetStreamKey and DeleteStream one wrapping overlay.ErrNotFound for an
// unknown name.
type StreamStore interface {
	ListStreams(ctx context.Context) ([]StreamRow, error)
	CreateStream(ctx context.Context, name, key string, created time.Time) error
	SetStreamKey(ctx context.Context, name, key string) error
	DeleteStream(ctx context.Context, name string) error
}

// Streams is this node's set of streams: their definitions and the live
// media.Stream of each. The definitions are kept in one of two backends: a
// JSON file in the data directory (a single node, OpenStreams) or a
// StreamStore shared by the nodes of a cluster (OpenStreamsInStore). Every
// change is written to the backend first, then to memory.
type Streams struct {
	path      string      // the file backend, or ""
	db        StreamStore // the store backend, or nil
	newStream func(name string) *media.Stream

	// ops serialises the changes (Create, SetKey, Delete, Reload) and is
	// held across their I/O; mu is held only while the maps are read or
	// changed, so Get never waits for the disk or the database. ops is a
	// channel so that a Get waiting to reload can give up.
	ops chan struct{}

	mu       sync.Mutex
	defs     map[string]StreamDef
	live     map[string]*media.Stream
	onChange func()
	lastMiss time.Time // when Get last reloaded for a name it did not know
}

// Errors the REST API maps to status codes.
var (
	ErrStreamExists  = errors.New("a stream with this name exists")
	ErrStreamUnknown = errors.New("no such stream")
	ErrBadStreamName = errors.New("stream names are 1-64 characters: lowercase letters, digits, '-' and '_', starting with a letter or digit")
	ErrBadStreamKey  = errors.New("stream keys are 16-128 characters: letters, digits, '-' and '_'")
)

var (
	streamNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	streamKeyRE  = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}$`)
)

const (
	// storeTimeout bounds each change written to a StreamStore.
	storeTimeout = 10 * time.Second
	// missReloadEvery is how often at most Get reloads the definitions for
	// a name it does not know, so unknown names cannot storm the database;
	// missReloadTimeout bounds such a reload.
	missReloadEvery   = time.Second
	missReloadTimeout = 3 * time.Second
)

func newStreams(path string, db StreamStore, newStream func(name string) *media.Stream) *Streams {
	return &Streams{path: path, db: db, newStream: newStream, ops: make(chan struct{}, 1),
		defs: map[string]StreamDef{}, live: map[string]*media.Stream{}}
}

// OpenStreams loads the definitions from the JSON file at path (which need
// not exist yet) and keeps them there.
func OpenStreams(path string, newStream func(name string) *media.Stream) (*Streams, error) {
	defs, err := readStreamsFile(path)
	if err != nil {
		return nil, err
	}
	s := newStreams(path, nil, newStream)
	for _, d := range defs {
		s.defs[d.Name] = d
		s.live[d.Name] = newStream(d.Name)
	}
	return s, nil
}

// OpenStreamsInStore loads the definitions from db and keeps them there.
// Other nodes' changes are learnt by Reload, and by Get for a name it does
// not know.
func OpenStreamsInStore(ctx context.Context, db StreamStore, newStream func(name string) *media.Stream) (*Streams, error) {
	s := newStreams("", db, newStream)
	if err := s.Reload(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// ImportStreamsFile moves the definitions of a single node's streams.json
// (see OpenStreams) at path into db, keeping names, keys and creation times,
// and returns how many it copied. It copies only into a db with no
// definitions yet, and then (or when db already had some) renames the file
// to path+".imported": it is superseded and is never imported again, so a
// stream deleted from db cannot come back. A missing file does nothing.
func ImportStreamsFile(ctx context.Context, db StreamStore, path string) (int, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	defs, err := readStreamsFile(path)
	if err != nil {
		return 0, err
	}
	rows, err := db.ListStreams(ctx)
	if err != nil {
		return 0, fmt.Errorf("streams: import %s: %w", path, err)
	}
	n := 0
	if len(rows) == 0 {
		for _, d := range defs {
			err := db.CreateStream(ctx, d.Name, d.Key, d.Created)
			if errors.Is(err, overlay.ErrExists) {
				continue // another node importing at the same time
			}
			if err != nil {
				return n, fmt.Errorf("streams: import %s: %w", path, err)
			}
			n++
		}
	}
	if err := os.Rename(path, path+".imported"); err != nil {
		return n, fmt.Errorf("streams: import: %w", err)
	}
	return n, nil
}

// readStreamsFile reads the definitions saved at path; a missing file has
// none.
func readStreamsFile(path string) ([]StreamDef, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("streams: %w", err)
	}
	var defs []StreamDef
	if err := json.Unmarshal(data, &defs); err != nil {
		return nil, fmt.Errorf("streams: %s is corrupt: %w", path, err)
	}
	return defs, nil
}

// SetOnChange sets fn, called after every successful Create, SetKey and
// Delete (not Reload), so a cluster can tell the other nodes to reload.
func (s *Streams) SetOnChange(fn func()) {
	s.mu.Lock()
	s.onChange = fn
	s.mu.Unlock()
}

func (s *Streams) changed() {
	s.mu.Lock()
	fn := s.onChange
	s.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// lock takes ops, or gives up when ctx ends.
func (s *Streams) lock(ctx context.Context) error {
	select {
	case s.ops <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("streams: %w", ctx.Err())
	}
}

func (s *Streams) unlock() { <-s.ops }

// Create adds a stream; an empty key gets a random one.
func (s *Streams) Create(name, key string) (StreamDef, error) {
	if !streamNameRE.MatchString(name) {
		return StreamDef{}, ErrBadStreamName
	}
	if key == "" {
		key = NewKey()
	} else if !streamKeyRE.MatchString(key) {
		return StreamDef{}, ErrBadStreamKey
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := s.lock(ctx); err != nil {
		return StreamDef{}, err
	}
	d, err := s.createLocked(ctx, name, key)
	s.unlock()
	if err != nil {
		return StreamDef{}, err
	}
	s.changed()
	return d, nil
}

func (s *Streams) createLocked(ctx context.Context, name, key string) (StreamDef, error) {
	d := StreamDef{Name: name, Key: key, Created: time.Now().UTC()}
	if s.db == nil {
		if _, ok := s.def(name); ok {
			return StreamDef{}, ErrStreamExists
		}
		if err := s.saveWith(func(defs map[string]StreamDef) { defs[name] = d }); err != nil {
			return StreamDef{}, err
		}
	} else {
		// The database decides: a name known here may have been deleted
		// on another node, and one unknown here made there.
		d.Created = d.Created.Truncate(time.Microsecond) // as the store keeps it
		err := s.db.CreateStream(ctx, name, key, d.Created)
		if errors.Is(err, overlay.ErrExists) {
			_ = s.reloadLocked(ctx) // learn the other node's stream
			return StreamDef{}, ErrStreamExists
		}
		if err != nil {
			return StreamDef{}, fmt.Errorf("streams: %w", err)
		}
	}
	st := s.newStream(name)
	s.mu.Lock()
	old := s.live[name] // a stream deleted on another node, not reloaded yet
	s.defs[name] = d
	s.live[name] = st
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return d, nil
}

// SetKey replaces a stream's key (rotation); an empty key gets a random one.
// The creator's current session goes on; the old key stops working.
func (s *Streams) SetKey(name, key string) (StreamDef, error) {
	if key == "" {
		key = NewKey()
	} else if !streamKeyRE.MatchString(key) {
		return StreamDef{}, ErrBadStreamKey
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := s.lock(ctx); err != nil {
		return StreamDef{}, err
	}
	d, err := s.setKeyLocked(ctx, name, key)
	s.unlock()
	if err != nil {
		return StreamDef{}, err
	}
	s.changed()
	return d, nil
}

func (s *Streams) setKeyLocked(ctx context.Context, name, key string) (StreamDef, error) {
	d, ok := s.def(name)
	if s.db == nil {
		if !ok {
			return StreamDef{}, ErrStreamUnknown
		}
		d.Key = key
		if err := s.saveWith(func(defs map[string]StreamDef) { defs[name] = d }); err != nil {
			return StreamDef{}, err
		}
	} else {
		err := s.db.SetStreamKey(ctx, name, key)
		if errors.Is(err, overlay.ErrNotFound) {
			if ok {
				_ = s.reloadLocked(ctx) // deleted on another node: here too
			}
			return StreamDef{}, ErrStreamUnknown
		}
		if err != nil {
			return StreamDef{}, fmt.Errorf("streams: %w", err)
		}
		if !ok {
			// Made on another node, not reloaded yet: load it now.
			if err := s.reloadLocked(ctx); err != nil {
				return StreamDef{}, err
			}
			if d, ok = s.def(name); !ok {
				return StreamDef{}, ErrStreamUnknown
			}
		}
		d.Key = key
	}
	s.mu.Lock()
	s.defs[name] = d
	s.mu.Unlock()
	return d, nil
}

// Delete removes a stream and disconnects its creator and viewers.
func (s *Streams) Delete(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := s.lock(ctx); err != nil {
		return err
	}
	err := s.deleteLocked(ctx, name)
	s.unlock()
	if err != nil {
		return err
	}
	s.changed()
	return nil
}

func (s *Streams) deleteLocked(ctx context.Context, name string) error {
	_, ok := s.def(name)
	if s.db == nil {
		if !ok {
			return ErrStreamUnknown
		}
		if err := s.saveWith(func(defs map[string]StreamDef) { delete(defs, name) }); err != nil {
			return err
		}
	} else {
		err := s.db.DeleteStream(ctx, name)
		if errors.Is(err, overlay.ErrNotFound) {
			if ok {
				s.forget(name) // deleted on another node first: gone here too
			}
			return ErrStreamUnknown
		}
		if err != nil {
			return fmt.Errorf("streams: %w", err)
		}
	}
	s.forget(name)
	return nil
}

// forget removes a stream from memory and closes its media.
func (s *Streams) forget(name string) {
	s.mu.Lock()
	st := s.live[name]
	delete(s.defs, name)
	delete(s.live, name)
	s.mu.Unlock()
	if st != nil {
		st.Close()
	}
}

// Reload reads the definitions again from the store backend and applies what
// changed there: a new name gets its media, a removed one is closed and
// forgotten as by Delete, a new key replaces the old one (which then stops
// working here), and a name deleted and made again gets new media. With the
// file backend, whose only writer is this node, it does nothing.
func (s *Streams) Reload(ctx context.Context) error {
	if s.db == nil {
		return nil
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	return s.reloadLocked(ctx)
}

func (s *Streams) reloadLocked(ctx context.Context) error {
	rows, err := s.db.ListStreams(ctx)
	if err != nil {
		return fmt.Errorf("streams: reload: %w", err)
	}
	want := make(map[string]StreamDef, len(rows))
	for _, r := range rows {
		want[r.Name] = StreamDef(r)
	}
	// ops is held: only this goroutine changes the maps until the end.
	var fresh, gone []string
	s.mu.Lock()
	for name, d := range want {
		if old, ok := s.defs[name]; !ok || !old.Created.Equal(d.Created) {
			fresh = append(fresh, name)
		}
	}
	for name := range s.defs {
		if _, ok := want[name]; !ok {
			gone = append(gone, name)
		}
	}
	s.mu.Unlock()
	made := make(map[string]*media.Stream, len(fresh))
	for _, name := range fresh {
		made[name] = s.newStream(name)
	}
	var closing []*media.Stream
	s.mu.Lock()
	for _, name := range gone {
		closing = append(closing, s.live[name])
		delete(s.defs, name)
		delete(s.live, name)
	}
	for name, st := range made {
		if old := s.live[name]; old != nil {
			closing = append(closing, old)
		}
		s.live[name] = st
	}
	for name, d := range want {
		s.defs[name] = d
	}
	s.mu.Unlock()
	for _, st := range closing {
		if st != nil {
			st.Close()
		}
	}
	return nil
}

func (s *Streams) def(name string) (StreamDef, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.defs[name]
	return d, ok
}

// Get returns a stream's definition and media. With the store backend, a
// name not known here is looked for once in the store (at most one such
// reload a second), so a stream made on another node is found before its
// notice arrives.
func (s *Streams) Get(name string) (StreamDef, *media.Stream, bool) {
	d, st, ok := s.get(name)
	if ok || s.db == nil || !streamNameRE.MatchString(name) {
		return d, st, ok
	}
	s.mu.Lock()
	if now := time.Now(); now.Sub(s.lastMiss) >= missReloadEvery {
		s.lastMiss = now
	} else {
		s.mu.Unlock()
		return StreamDef{}, nil, false
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), missReloadTimeout)
	defer cancel()
	if err := s.Reload(ctx); err != nil {
		return StreamDef{}, nil, false
	}
	return s.get(name)
}

func (s *Streams) get(name string) (StreamDef, *media.Stream, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.defs[name]
	return d, s.live[name], ok
}

// List returns all definitions sorted by name.
func (s *Streams) List() []StreamDef {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]StreamDef, 0, len(s.defs))
	for _, d := range s.defs {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// CheckKey reports whether key publishes to the stream, in constant time.
func (d StreamDef) CheckKey(key string) bool {
	return subtle.ConstantTimeCompare([]byte(d.Key), []byte(key)) == 1
}

// Close closes every stream's media.
func (s *Streams) Close() {
	s.mu.Lock()
	all := make([]*media.Stream, 0, len(s.live))
	for _, st := range s.live {
		all = append(all, st)
	}
	s.mu.Unlock()
	for _, st := range all {
		st.Close()
	}
}

// saveWith writes the definitions, changed by change, to the file
// atomically (temporary file, fsync, rename) so a crash never leaves a
// half-written file. Memory is left as it was: the caller updates it once
// the file is written.
func (s *Streams) saveWith(change func(defs map[string]StreamDef)) error {
	s.mu.Lock()
	next := make(map[string]StreamDef, len(s.defs)+1)
	for name, d := range s.defs {
		next[name] = d
	}
	s.mu.Unlock()
	change(next)
	defs := make([]StreamDef, 0, len(next))
	for _, d := range next {
		defs = append(defs, d)
	}
	sort.Slice(defs, func(i, j int) bool { return defs[i].Name < defs[j].Name })
	data, err := json.MarshalIndent(defs, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".streams-*.json")
	if err != nil {
		return fmt.Errorf("streams: save: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("streams: save: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("streams: save: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("streams: save: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("streams: save: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("streams: save: %w", err)
	}
	return nil
}

// NewKey returns a random 32-character key.
func NewKey() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
