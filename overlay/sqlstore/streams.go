package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// StreamRow is one stream definition. It is an alias of an unnamed struct,
// the same type as signaling.StreamRow, so that *Store satisfies
// signaling.StreamStore without either package importing the other.
type StreamRow = struct {
	Name    string
	Key     string
	Created time.Time
}

// ListStreams returns every stream definition, sorted by name.
func (s *Store) ListStreams(ctx context.Context) ([]StreamRow, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT name, stream_key, created_at FROM streams ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	defer rows.Close()
	var out []StreamRow
	for rows.Next() {
		var r StreamRow
		var created int64
		if err := rows.Scan(&r.Name, &r.Key, &created); err != nil {
			return nil, fmt.Errorf("list streams: %w", err)
		}
		r.Created = fromMicros(created)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	return out, nil
}

// CreateStream adds a stream definition; a name already there is
// overlay.ErrExists. created is kept to the microsecond.
func (s *Store) CreateStream(ctx context.Context, name, key string, created time.Time) error {
	if name == "" || key == "" {
		return errors.New("create stream: empty name or key")
	}
	n, err := s.execWrite(ctx, `INSERT INTO streams (name, stream_key, created_at) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO NOTHING`, name, key, micros(created))
	if err != nil {
		return fmt.Errorf("create stream %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("create stream %s: %w", name, overlay.ErrExists)
	}
	return nil
}

// SetStreamKey replaces a stream's key; an unknown name is
// overlay.ErrNotFound.
func (s *Store) SetStreamKey(ctx context.Context, name, key string) error {
	if key == "" {
		return errors.New("set stream key: empty key")
	}
	n, err := s.execWrite(ctx, `UPDATE streams SET stream_key = $2 WHERE name = $1`, name, key)
	if err != nil {
		return fmt.Errorf("set key of stream %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("set key of stream %s: %w", name, overlay.ErrNotFound)
	}
	return nil
}

// DeleteStream removes a stream definition; an unknown name is
// overlay.ErrNotFound.
func (s *Store) DeleteStream(ctx context.Context, name string) error {
	n, err := s.execWrite(ctx, `DELETE FROM streams WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("delete stream %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("delete stream %s: %w", name, overlay.ErrNotFound)
	}
	return nil
}
