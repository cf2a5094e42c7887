package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vitrine-live/vitrine/overlay/chat"
)

var _ chat.Store = (*Store)(nil)

// ChatName implements chat.Store.
func (s *Store) ChatName(ctx context.Context, viewer string) (string, time.Time, error) {
	var name string
	var changed int64
	err := s.read.QueryRowContext(ctx, `SELECT name, changed_at FROM chat_names WHERE viewer_id = $1`, viewer).Scan(&name, &changed)
	if errors.Is(err, sql.ErrNoRows) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("chat name: %w", err)
	}
	return name, fromMicros(changed), nil
}

// SetChatName implements chat.Store. The unique name_key settles two
// viewers taking one name at the same moment.
func (s *Store) SetChatName(ctx context.Context, viewer, name string, now time.Time) error {
	key := chat.NameKey(name)
	taken := func(q execer) (bool, error) {
		var owner string
		err := q.QueryRowContext(ctx, `SELECT viewer_id FROM chat_names WHERE name_key = $1`, key).Scan(&owner)
		if errors.Is(err, sql.ErrNoRows) {
			return false, nil
		}
		return err == nil && owner != viewer, err
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if t, err := taken(tx); err != nil || t {
			if t {
				return chat.ErrNameTaken
			}
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO chat_names (viewer_id, name, name_key, changed_at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (viewer_id) DO UPDATE SET name = excluded.name, name_key = excluded.name_key, changed_at = excluded.changed_at`,
			viewer, name, key, micros(now))
		return err
	})
	if err != nil && !errors.Is(err, chat.ErrNameTaken) {
		if t, terr := taken(s.read); terr == nil && t {
			return chat.ErrNameTaken
		}
		return fmt.Errorf("set chat name: %w", err)
	}
	return err
}

func flag(b bool) int {
	if b {
		return 1
	}
	return 0
}

// AddChatMessages implements chat.Store.
func (s *Store) AddChatMessages(ctx context.Context, ms []chat.Message) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		for _, m := range ms {
			var at sql.NullInt64
			if m.At != nil {
				at = sql.NullInt64{Int64: int64(*m.At), Valid: true}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO chat_messages
				(id, stream, viewer_id, name, role, body, question, sku, answered, media_at, created_at, status)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING`,
				m.ID, m.Stream, m.Viewer, m.Name, m.Role, m.Text, flag(m.Question), m.SKU, flag(m.Answered), at,
				m.TS*1000, m.Status); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add chat messages: %w", err)
	}
	return nil
}

func addChatAction(ctx context.Context, tx *sql.Tx, stream string, a chat.Action) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO chat_actions (id, stream, at, by_role, action, target, detail)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, newID("act_"), stream, micros(a.At), a.By, a.Action, a.Target, a.Detail)
	return err
}

// UpdateChatMessage implements chat.Store.
func (s *Store) UpdateChatMessage(ctx context.Context, m chat.Message, a chat.Action) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		n, err := execN(ctx, tx, `UPDATE chat_messages SET status = $1, answered = $2 WHERE id = $3 AND stream = $4`,
			m.Status, flag(m.Answered), m.ID, m.Stream)
		if err != nil {
			return err
		}
		if n == 0 {
			return chat.ErrUnknownMessage
		}
		return addChatAction(ctx, tx, m.Stream, a)
	})
	if err != nil {
		return fmt.Errorf("update chat message %s: %w", m.ID, err)
	}
	return nil
}

const chatColumns = `id, stream, viewer_id, name, role, body, question, sku, answered, media_at, created_at, status`

func scanChat(row interface{ Scan(...any) error }) (chat.Message, error) {
	var m chat.Message
	var question, answered int
	var at sql.NullInt64
	var created int64
	if err := row.Scan(&m.ID, &m.Stream, &m.Viewer, &m.Name, &m.Role, &m.Text, &question, &m.SKU, &answered, &at, &created, &m.Status); err != nil {
		return m, err
	}
	m.Question, m.Answered, m.TS = question != 0, answered != 0, created/1000
	if at.Valid {
		v := uint32(at.Int64)
		m.At = &v
	}
	return m, nil
}

// ChatMessage implements chat.Store.
func (s *Store) ChatMessage(ctx context.Context, stream, id string) (chat.Message, error) {
	m, err := scanChat(s.read.QueryRowContext(ctx, `SELECT `+chatColumns+` FROM chat_messages WHERE id = $1 AND stream = $2`, id, stream))
	if errors.Is(err, sql.ErrNoRows) {
		return m, chat.ErrUnknownMessage
	}
	if err != nil {
		return m, fmt.Errorf("chat message %s: %w", id, err)
	}
	return m, nil
}

// RecentChat implements chat.Store.
func (s *Store) RecentChat(ctx context.Context, stream string, limit int) ([]chat.Message, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+chatColumns+` FROM chat_messages
		WHERE stream = $1 AND status IN ('visible', 'held') ORDER BY created_at DESC, id DESC LIMIT $2`, stream, limit)
	if err != nil {
		return nil, fmt.Errorf("recent chat of %s: %w", stream, err)
	}
	defer rows.Close()
	var ms []chat.Message
	for rows.Next() {
		m, err := scanChat(rows)
		if err != nil {
			return nil, fmt.Errorf("recent chat of %s: %w", stream, err)
		}
		ms = append(ms, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("recent chat of %s: %w", stream, err)
	}
	slices.Reverse(ms)
	return ms, nil
}

// ChatRoom implements chat.Store.
func (s *Store) ChatRoom(ctx context.Context, stream string) (chat.RoomState, error) {
	var st chat.RoomState
	var raw string
	err := s.read.QueryRowContext(ctx, `SELECT state FROM chat_rooms WHERE stream = $1`, stream).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return st, nil
	}
	if err == nil {
		err = json.Unmarshal([]byte(raw), &st)
	}
	if err != nil {
		return chat.RoomState{}, fmt.Errorf("chat room %s: %w", stream, err)
	}
	return st, nil
}

// SaveChatRoom implements chat.Store.
func (s *Store) SaveChatRoom(ctx context.Context, stream string, st chat.RoomState, deleted []string, a chat.Action) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("save chat room %s: %w", stream, err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO chat_rooms (stream, state, updated_at) VALUES ($1, $2, $3)
			ON CONFLICT (stream) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at`,
			stream, string(raw), micros(a.At)); err != nil {
			return err
		}
		for _, id := range deleted {
			if _, err := tx.ExecContext(ctx, `UPDATE chat_messages SET status = 'deleted' WHERE id = $1 AND stream = $2`, id, stream); err != nil {
				return err
			}
		}
		return addChatAction(ctx, tx, stream, a)
	})
	if err != nil {
		return fmt.Errorf("save chat room %s: %w", stream, err)
	}
	return nil
}

// ChatActions implements chat.Store.
func (s *Store) ChatActions(ctx context.Context, stream string, limit int) ([]chat.Action, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT at, by_role, action, target, detail FROM chat_actions
		WHERE stream = $1 ORDER BY at DESC, id DESC LIMIT $2`, stream, limit)
	if err != nil {
		return nil, fmt.Errorf("chat log of %s: %w", stream, err)
	}
	defer rows.Close()
	out := []chat.Action{}
	for rows.Next() {
		var a chat.Action
		var at int64
		if err := rows.Scan(&at, &a.By, &a.Action, &a.Target, &a.Detail); err != nil {
			return nil, fmt.Errorf("chat log of %s: %w", stream, err)
		}
		a.At = fromMicros(at)
		out = append(out, a)
	}
	return out, rows.Err()
}

// PruneChat implements chat.Store: at most 1,000 messages and 1,000 log
// entries per call.
func (s *Store) PruneChat(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for _, q := range []string{
		`DELETE FROM chat_messages WHERE id IN (SELECT id FROM chat_messages WHERE created_at < $1 LIMIT 1000)`,
		`DELETE FROM chat_actions WHERE id IN (SELECT id FROM chat_actions WHERE at < $1 LIMIT 1000)`,
	} {
		n, err := s.execWrite(ctx, q, micros(before))
		if err != nil {
			return total, fmt.Errorf("prune chat: %w", err)
		}
		total += n
	}
	return total, nil
}
