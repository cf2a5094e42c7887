package signaling

import (
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
)

// StreamDef is what is kept of a stream across restarts: its name and the
// key a creator publishes with.
type StreamDef struct {
	Name    string    `json:"name"`
	Key     string    `json:"key"`
	Created time.Time `json:"created"`
}

// Streams is this node's set of streams: their definitions, saved to a JSON
// file in the data directory, and the live media.Stream of each.
type Streams struct {
	path      string
	newStream func(name string) *media.Stream

	mu   sync.Mutex
	defs map[string]StreamDef
	live map[string]*media.Stream
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

// OpenStreams loads the definitions from path (which need not exist yet).
func OpenStreams(path string, newStream func(name string) *media.Stream) (*Streams, error) {
	s := &Streams{path: path, newStream: newStream, defs: map[string]StreamDef{}, live: map[string]*media.Stream{}}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("streams: %w", err)
	default:
		var defs []StreamDef
		if err := json.Unmarshal(data, &defs); err != nil {
			return nil, fmt.Errorf("streams: %s is corrupt: %w", path, err)
		}
		for _, d := range defs {
			s.defs[d.Name] = d
			s.live[d.Name] = newStream(d.Name)
		}
	}
	return s, nil
}

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
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.defs[name]; ok {
		return StreamDef{}, ErrStreamExists
	}
	d := StreamDef{Name: name, Key: key, Created: time.Now().UTC()}
	s.defs[name] = d
	if err := s.saveLocked(); err != nil {
		delete(s.defs, name)
		return StreamDef{}, err
	}
	s.live[name] = s.newStream(name)
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
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.defs[name]
	if !ok {
		return StreamDef{}, ErrStreamUnknown
	}
	old := d
	d.Key = key
	s.defs[name] = d
	if err := s.saveLocked(); err != nil {
		s.defs[name] = old
		return StreamDef{}, err
	}
	return d, nil
}

// Delete removes a stream and disconnects its creator and viewers.
func (s *Streams) Delete(name string) error {
	s.mu.Lock()
	d, ok := s.defs[name]
	if !ok {
		s.mu.Unlock()
		return ErrStreamUnknown
	}
	delete(s.defs, name)
	if err := s.saveLocked(); err != nil {
		s.defs[name] = d
		s.mu.Unlock()
		return err
	}
	st := s.live[name]
	delete(s.live, name)
	s.mu.Unlock()
	st.Close()
	return nil
}

// Get returns a stream's definition and media.
func (s *Streams) Get(name string) (StreamDef, *media.Stream, bool) {
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

// saveLocked writes the definitions atomically (temporary file, fsync,
// rename) so a crash never leaves a half-written file.
func (s *Streams) saveLocked() error {
	defs := make([]StreamDef, 0, len(s.defs))
	for _, d := range s.defs {
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
