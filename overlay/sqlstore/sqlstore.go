// Package sqlstore implements overlay.Store on database/sql, for SQLite (the
// embedded default, a file in the data directory) and PostgreSQL (many
// nodes). The SQL is shared; the few dialect differences sit in dialect.
package sqlstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers driver "pgx"
	"modernc.org/sqlite"               // registers driver "sqlite"

	"github.com/vitrine-live/vitrine/overlay"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// dialect holds what differs between SQLite and PostgreSQL. Everything else
// is one SQL text: both accept $N placeholders, ON CONFLICT, RETURNING,
// SAVEPOINT and partial indexes.
type dialect struct {
	name string
	// skipLocked ends the row selection of ClaimEvents. PostgreSQL lets
	// workers on several nodes claim disjoint events without waiting on each
	// other; SQLite has a single writer, so there is nothing to skip.
	skipLocked string
	// migrationLock serialises schema migrations of nodes starting together;
	// SQLite's BEGIN IMMEDIATE already does.
	migrationLock string
}

var _ overlay.Store = (*Store)(nil)

// Store is an overlay.Store on SQLite or PostgreSQL.
type Store struct {
	d dialect
	// write runs every transaction that changes data. For SQLite it holds a
	// single connection whose transactions start with BEGIN IMMEDIATE: writers
	// queue in Go instead of failing with SQLITE_BUSY (see docs/benchmarks.md).
	// For PostgreSQL it is the same pool as read.
	write *sql.DB
	// read serves queries outside transactions; with SQLite's WAL they run
	// beside the writer.
	read *sql.DB
	// writeQueue lines writers up first come, first served before they take
	// a connection: database/sql hands a freed connection to a random
	// waiter, which tripled the p99 latency of buys under load
	// (docs/benchmarks.md); a channel's waiters are served in order. Its size is
	// the number of write transactions at once: 1 for SQLite, and for
	// PostgreSQL the pool less a few connections kept for reads.
	writeQueue chan struct{}
}

// PoolSize is how many PostgreSQL connections a Store opens at most. Buys of
// one product queue on its row lock anyway, so more connections only add
// contention.
const PoolSize = 16

// Open opens the store named by dsnOrPath and applies pending migrations. A
// postgres:// or postgresql:// URL selects PostgreSQL; anything else is the
// path of a SQLite file, created (with its directory) if missing.
func Open(ctx context.Context, dsnOrPath string) (*Store, error) {
	if strings.HasPrefix(dsnOrPath, "postgres://") || strings.HasPrefix(dsnOrPath, "postgresql://") {
		return openPostgres(ctx, dsnOrPath)
	}
	return openSQLite(ctx, dsnOrPath, sqliteDefaults())
}

func openPostgres(ctx context.Context, dsn string) (*Store, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open postgres: %w", err)
	}
	db.SetMaxOpenConns(PoolSize)
	db.SetMaxIdleConns(PoolSize)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{
		d: dialect{
			name:          "postgres",
			skipLocked:    "FOR UPDATE SKIP LOCKED",
			migrationLock: "SELECT pg_advisory_xact_lock(7316482901)",
		},
		write:      db,
		read:       db,
		writeQueue: make(chan struct{}, PoolSize-4),
	}
	if err := s.start(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// sqliteTuning holds the SQLite choices that were measured against their
// alternatives (BenchmarkSQLiteTuning); Open always uses sqliteDefaults.
type sqliteTuning struct {
	// writers is the size of the write pool. One connection makes writers
	// queue in Go; more let them meet in SQLite's lock, where they wait in
	// busy_timeout's sleep-and-retry loop or fail with SQLITE_BUSY.
	writers int
	// txlock "immediate" takes the write lock at BEGIN, so a transaction can
	// never fail half-way when it first writes; "deferred" takes it then.
	txlock string
	// synchronous FULL fsyncs the WAL at every commit. NORMAL would already
	// survive kill -9 (committed pages sit in the OS cache), but a power cut
	// or kernel crash could then lose the last commits; a confirmed order is
	// money, so we pay one fsync per commit.
	synchronous string
	// queue puts writers in a FIFO queue in front of the write pool.
	queue bool
}

// sqliteDefaults is what Open uses.
func sqliteDefaults() sqliteTuning {
	return sqliteTuning{writers: 1, txlock: "immediate", synchronous: "FULL", queue: true}
}

func openSQLite(ctx context.Context, path string, tune sqliteTuning) (*Store, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("sqlstore: bad SQLite path %q", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("sqlstore: data directory: %w", err)
	}
	name := "file:" + (&url.URL{Path: path}).EscapedPath()
	// WAL lets readers run beside the writer; busy_timeout makes a
	// connection that meets a lock (a checkpoint, another process) wait
	// instead of failing at once.
	pragmas := "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(" + tune.synchronous + ")"
	write, err := sql.Open("sqlite", name+pragmas+"&_txlock="+tune.txlock)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open sqlite: %w", err)
	}
	write.SetMaxOpenConns(tune.writers)
	write.SetMaxIdleConns(tune.writers)
	write.SetConnMaxIdleTime(0)
	// The writer connects first so the file is in WAL mode before readers
	// open it.
	if err := write.PingContext(ctx); err != nil {
		write.Close()
		return nil, fmt.Errorf("sqlstore: open sqlite %s: %w", path, err)
	}
	read, err := sql.Open("sqlite", name+pragmas+"&_pragma=query_only(1)")
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("sqlstore: open sqlite: %w", err)
	}
	read.SetMaxOpenConns(4)
	read.SetMaxIdleConns(4)
	s := &Store{d: dialect{name: "sqlite"}, write: write, read: read}
	if tune.queue {
		s.writeQueue = make(chan struct{}, 1)
	}
	if err := s.start(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) start(ctx context.Context) error {
	if err := s.write.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlstore: connect %s: %w", s.d.name, err)
	}
	if err := s.migrate(ctx); err != nil {
		return fmt.Errorf("sqlstore: migrate %s: %w", s.d.name, err)
	}
	return nil
}

// Close closes the store's connections.
func (s *Store) Close() error {
	err := s.write.Close()
	if s.read != s.write {
		err = errors.Join(err, s.read.Close())
	}
	return err
}

// Dialect is "sqlite" or "postgres".
func (s *Store) Dialect() string { return s.d.name }

type migration struct {
	version int
	name    string
	sql     string
}

// migrations lists the embedded files named NNNN_what.sql by version.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v < 1 {
			return nil, fmt.Errorf("migration file %q: name must start with a version number and '_'", e.Name())
		}
		body, err := fs.ReadFile(migrationFiles, "migrations/"+e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %q and %q share version %d", ms[i-1].name, ms[i].name, ms[i].version)
		}
	}
	return ms, nil
}

// migrate applies, in one transaction, every embedded migration newer than
// the database's version, and records each in schema_migrations.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if s.d.migrationLock != "" {
			if _, err := tx.ExecContext(ctx, s.d.migrationLock); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    BIGINT PRIMARY KEY,
			name       TEXT NOT NULL,
			applied_at BIGINT NOT NULL)`); err != nil {
			return err
		}
		var current int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
			return err
		}
		if len(ms) > 0 && current > ms[len(ms)-1].version {
			return fmt.Errorf("database schema version %d is newer than this binary's %d", current, ms[len(ms)-1].version)
		}
		for _, m := range ms {
			if m.version <= current {
				continue
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`,
				m.version, m.name, time.Now().UnixMicro()); err != nil {
				return err
			}
		}
		return nil
	})
}

// queueForWrite waits for the writer's turn when writes are queued, and
// returns the function that ends the turn.
func (s *Store) queueForWrite(ctx context.Context) (func(), error) {
	if s.writeQueue == nil {
		return func() {}, nil
	}
	select {
	case s.writeQueue <- struct{}{}:
		return func() { <-s.writeQueue }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// execWrite runs one statement that changes data, outside a transaction,
// and returns how many rows it changed.
func (s *Store) execWrite(ctx context.Context, query string, args ...any) (int64, error) {
	done, err := s.queueForWrite(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	n, err := execN(ctx, s.write, query, args...)
	return n, diskFull(err)
}

// inTx runs fn in a write transaction and commits when fn returns nil.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	done, err := s.queueForWrite(ctx)
	if err != nil {
		return err
	}
	defer done()
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return diskFull(err)
	}
	if err := fn(tx); err != nil {
		return diskFull(errors.Join(err, ignoreDone(tx.Rollback())))
	}
	return diskFull(tx.Commit())
}

// diskFull marks the error of a write that found the disk full (SQLite's
// SQLITE_FULL, PostgreSQL's disk_full) so that errors.Is(err,
// syscall.ENOSPC) holds: the server can then say that the disk is full,
// not merely that the store failed. SQLite rolls such a transaction back
// and works again once there is space.
func diskFull(err error) error {
	var lite *sqlite.Error
	var pg *pgconn.PgError
	if (errors.As(err, &lite) && lite.Code()&0xff == 13) || (errors.As(err, &pg) && pg.Code == "53100") {
		return diskFullError{err}
	}
	return err
}

type diskFullError struct{ err error }

func (e diskFullError) Error() string   { return e.err.Error() }
func (e diskFullError) Unwrap() []error { return []error{e.err, syscall.ENOSPC} }

func ignoreDone(err error) error {
	if errors.Is(err, sql.ErrTxDone) {
		return nil
	}
	return err
}

// execer is what *sql.DB and *sql.Tx share.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// execN runs a statement and returns how many rows it changed: the answer of
// every conditional update.
func execN(ctx context.Context, q execer, query string, args ...any) (int64, error) {
	res, err := q.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func newID(prefix string) string { return prefix + strings.ToLower(rand.Text()) }

// micros stores a time; 0 stands for the zero time.
func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMicro(v).UTC()
}
