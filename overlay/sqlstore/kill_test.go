package sqlstore

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// A confirmed order must survive kill -9 of the server at any moment. The
// test runs a child process (this test binary again) that buys and confirms
// in a loop and reports each order once Confirm returned; the parent kills
// it with SIGKILL mid-stream, reopens the store and finds every reported
// order confirmed, and stock that adds up.

const killChildEnv = "VITRINE_KILL_CHILD_STORE"

func TestConfirmedOrderSurvivesKill(t *testing.T) {
	if target := os.Getenv(killChildEnv); target != "" {
		killChild(t, target)
		return
	}
	t.Run("SQLite", func(t *testing.T) {
		killAndCheck(t, filepath.Join(t.TempDir(), "vitrine.db"))
	})
	t.Run("Postgres", func(t *testing.T) {
		killAndCheck(t, freshSchema(t, postgresDSN(t)))
	})
}

const killStock = 1_000_000

func killAndCheck(t *testing.T, target string) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestConfirmedOrderSurvivesKill$")
	cmd.Env = append(os.Environ(), killChildEnv+"="+target)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var confirmed []string
	lines := bufio.NewScanner(out)
	for lines.Scan() && len(confirmed) < 50 {
		if id, ok := strings.CutPrefix(lines.Text(), "confirmed "); ok {
			confirmed = append(confirmed, id)
		}
	}
	// Kill while the child is in the middle of its next transactions.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if len(confirmed) < 50 {
		t.Fatalf("child reported only %d confirmed orders before it stopped", len(confirmed))
	}

	s, err := Open(context.Background(), target)
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer s.Close()
	ctx := context.Background()
	for _, id := range confirmed {
		o, err := s.Order(ctx, id)
		if err != nil || o.Status != overlay.OrderConfirmed {
			t.Fatalf("order %s after kill -9: %+v, %v", id, o, err)
		}
	}
	// Nothing half-done either: stock plus units held by orders is what
	// the product started with.
	orders, err := s.Orders(ctx, "live", 0)
	if err != nil {
		t.Fatal(err)
	}
	var held int64
	for _, o := range orders {
		if o.Status == overlay.OrderReserved || o.Status == overlay.OrderConfirmed {
			held += o.Qty
		}
	}
	if st := stockOf(t, s, "kill-1"); st+held != killStock {
		t.Fatalf("stock %d + held %d = %d, want %d", st, held, st+held, killStock)
	}
	t.Logf("%d orders reported before the kill, %d in the store after it", len(confirmed), len(orders))
}

// killChild buys and confirms until it is killed (or, as a safety net,
// for at most a minute).
func killChild(t *testing.T, target string) {
	ctx := context.Background()
	s, err := Open(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := s.CreateProduct(ctx, product("kill-1", killStock, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartSale(ctx, overlay.Sale{Stream: "live", SKU: "kill-1", StartsAt: now, EndsAt: now.Add(time.Hour)}, now); err != nil {
		t.Fatal(err)
	}
	for i := 0; time.Since(now) < time.Minute; i++ {
		res, err := s.Buy(ctx, buyReq("kill-1", fmt.Sprintf("viewer-%d", i%50), fmt.Sprintf("key-kill-%08d", i), 1), time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Confirm(ctx, res.Order.ID, res.Order.ViewerID, time.Now()); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("confirmed %s\n", res.Order.ID)
	}
}
