package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// logTap is the test's testing.TB that also keeps the server's log lines,
// so that the test can read what an operator would read.
type logTap struct {
	testing.TB
	mu    sync.Mutex
	lines []string
}

func (l *logTap) Log(args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprint(args...))
	l.mu.Unlock()
	l.TB.Log(args...)
}

func (l *logTap) grep(s string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}

// TestSQLiteDiskFull: the SQLite data directory sits on a 16 MiB tmpfs that
// fills up in the middle of a flash sale. Buys and confirms the store cannot
// write answer 503 store_unavailable with Retry-After (never a 200 for an
// order that was not stored, never a 500), the log says the disk is full and
// the failures are counted in /metrics. Once space is freed buying works
// again without a restart; every order told to a buyer is stored exactly
// once, the stock adds up, the database passes PRAGMA integrity_check, the
// merchant's webhook gets every confirmed order, and a restart on the same
// data directory finds the same orders.
func TestSQLiteDiskFull(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(disk, 0o700); err != nil {
		t.Fatal(err)
	}
	// 16 MiB: SQLite's WAL alone grows to about 4 MiB (1000 pages) between
	// checkpoints, so a smaller disk fills up before the test fills it.
	if err := syscall.Mount("tmpfs", disk, "tmpfs", 0, "size=16m"); err != nil {
		t.Fatalf("mount a 16 MiB tmpfs on %s to fill up (needs root, as in CI): %v", disk, err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(disk, syscall.MNT_DETACH) })
	data := filepath.Join(disk, "data")
	free := func() int64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(disk, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}

	hook := newConfirmHook(t)
	tap := &logTap{TB: t}
	withData := func(c *Config) {
		c.Data = data
		c.Commerce.WebhookURL, c.Commerce.WebhookSecret = hook.URL, "disk-full-webhook-secret"
	}
	a, base := testApp(tap, withData)
	const initial = 100_000
	if _, err := a.store.CreateProduct(context.Background(), overlay.Product{SKU: "drop-1", Title: "Drop", PriceMinor: 5000,
		Currency: "EUR", Stock: initial, Active: true}); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := postJSON(t, base+"/api/v1/streams/demo/cues", a.demo.Key,
		map[string]any{"type": "sale.start", "sku": "drop-1", "price_minor": 2500, "units": initial, "duration_s": 300}); code != 201 {
		t.Fatalf("sale.start: %d %v", code, out)
	}

	// post counts the 503s by phase and route ("full buy", ...).
	const before, full, after = 0, 1, 2
	phases := [3]string{"before", "full", "after"}
	var phase atomic.Int32
	var c storeClient
	post := func(what, url, viewer, body string) (int, map[string]any, http.Header) {
		return c.post(t, phases[phase.Load()]+" "+what, url, viewer, body)
	}
	unavailable := func(ph int) int {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.unavailable[phases[ph]+" buy"] + c.unavailable[phases[ph]+" confirm"]
	}

	// 8 buyers buy and confirm in a loop, each buy with a fresh key,
	// retried with the same key after a 503.
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	stopBuyers := func() {
		stopOnce.Do(func() { close(stop) })
		wg.Wait()
	}
	defer stopBuyers() // before the server stops, also when the test fails early
	var mu sync.Mutex
	reserved := map[string]bool{}     // order ids a buy answered 200 reserved for
	confirmed := map[string]int32{}   // order ids a confirm answered 200 for -> phase
	confirmedIn := [3]int{}           // confirmations answered per phase
	firstAfter := make(chan struct{}) // closed at the first confirmation once space is back
	var firstAfterOnce sync.Once
	for b := range 8 {
		wg.Go(func() {
			viewer := ""
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code, res, h := post("buy", base+"/api/v1/streams/demo/buy", viewer, fmt.Sprintf(`{"sku":"drop-1","qty":1,"key":"full-%d-%04d"}`, b, i))
				if code == 0 {
					return
				}
				if tok := h.Get("Vitrine-Viewer"); tok != "" {
					viewer = tok
				}
				if code != 200 || res["outcome"] != "reserved" {
					continue
				}
				id := res["order"].(map[string]any)["id"].(string)
				mu.Lock()
				reserved[id] = true
				mu.Unlock()
				code, o, _ := post("confirm", base+"/api/v1/orders/"+id+"/confirm", viewer, "")
				if code != 200 || o["status"] != "confirmed" {
					continue
				}
				p := phase.Load()
				mu.Lock()
				if _, twice := confirmed[id]; twice {
					t.Errorf("order %s confirmed twice", id)
				}
				confirmed[id] = p
				confirmedIn[p]++
				mu.Unlock()
				if p == after {
					firstAfterOnce.Do(func() { close(firstAfter) })
				}
			}
		})
	}
	count := func(p int) int {
		mu.Lock()
		defer mu.Unlock()
		return confirmedIn[p]
	}

	// Fill the disk 1 s into the sale.
	time.Sleep(time.Second)
	if count(before) == 0 {
		t.Fatal("no order confirmed in the first second: the sale does not run")
	}
	t.Logf("%d KiB free on the tmpfs before filling it", free()>>10)
	// The store may fail from the filler's first write on: from then on a
	// 503 counts as "while full".
	phase.Store(full)
	filler, err := os.Create(filepath.Join(disk, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	filled := int64(0)
	for {
		n, err := filler.Write(chunk)
		filled += int64(n)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatalf("fill the disk: %v", err)
		}
	}
	fullAt := time.Now()
	t.Logf("disk filled with %d KiB, %d bytes free", filled>>10, free())
	// The store must notice: wait for the first 503, then keep the disk full
	// a second more.
	eventually(t, "a buy or confirm answered 503 on the full disk", 10*time.Second, func() bool {
		return unavailable(full) > 0
	})
	t.Logf("first 503 %s after the disk filled", time.Since(fullAt).Round(time.Millisecond))
	time.Sleep(time.Second)

	// Free the space: buying works again by itself.
	filler.Close()
	if err := os.Remove(filler.Name()); err != nil {
		t.Fatal(err)
	}
	phase.Store(after)
	freedAt := time.Now()
	select {
	case <-firstAfter:
		t.Logf("first order confirmed %s after the space came back", time.Since(freedAt).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("no order confirmed within 15 s of freeing the disk")
	}
	eventually(t, "20 orders confirmed after the disk was freed", 15*time.Second, func() bool { return count(after) >= 20 })
	stopBuyers()

	c.mu.Lock()
	buy503 := c.unavailable["full buy"] + c.unavailable["after buy"] + c.unavailable["before buy"]
	confirm503 := c.unavailable["full confirm"] + c.unavailable["after confirm"] + c.unavailable["before confirm"]
	other := c.other
	c.mu.Unlock()
	t.Logf("orders confirmed: %d before, %d while full, %d after; 503s: %d before, %d while full, %d after (%d buys, %d confirms)",
		confirmedIn[before], confirmedIn[full], confirmedIn[after], unavailable(before), unavailable(full), unavailable(after), buy503, confirm503)
	if n := unavailable(before); n > 0 {
		t.Errorf("%d answers 503 before the disk was full", n)
	}
	if len(other) > 0 {
		t.Errorf("%d answers other than 200 and 503, first: %s", len(other), other[0])
	}

	// What an operator sees: a log line that names the full disk, and the
	// failures in /metrics.
	if lines := tap.grep("the disk is full"); len(lines) == 0 {
		t.Error("no log line says the disk is full")
	} else {
		t.Logf("the log says: %s", lines[0])
	}
	if v := metricValue(t, base, `vitrine_buy_attempts_total{result="error"}`); int(v) != buy503 {
		t.Errorf("vitrine_buy_attempts_total{result=\"error\"} = %v, buyers got %d 503s", v, buy503)
	}
	if v := metricValue(t, base, `vitrine_http_requests_total{code="503",route="/api/v1/streams/{stream}/buy"}`); int(v) != buy503 {
		t.Errorf("vitrine_http_requests_total of 503 buys = %v, buyers got %d", v, buy503)
	}
	if v := metricValue(t, base, `vitrine_http_requests_total{code="503",route="/api/v1/orders/{order}/confirm"}`); int(v) != confirm503 {
		t.Errorf("vitrine_http_requests_total of 503 confirms = %v, buyers got %d", v, confirm503)
	}
	if v := metricValue(t, base, `vitrine_confirm_failures_total{reason="store_unavailable"}`); int(v) != confirm503 {
		t.Errorf("vitrine_confirm_failures_total{reason=\"store_unavailable\"} = %v, buyers got %d 503 confirms", v, confirm503)
	}

	// The store holds exactly what buyers were told, once each, and the
	// units add up.
	ctx := context.Background()
	checkStore := func(st interface {
		Orders(context.Context, string, int) ([]overlay.Order, error)
		Product(context.Context, string) (overlay.Product, error)
		ActiveSale(context.Context, string, string, time.Time) (overlay.Sale, error)
	}) map[string]string {
		t.Helper()
		orders, err := st.Orders(ctx, "demo", 10_000)
		if err != nil {
			t.Fatal(err)
		}
		status := map[string]string{}
		keys := map[string]string{}
		held := int64(0)
		for _, o := range orders {
			if _, dup := status[o.ID]; dup {
				t.Errorf("order %s listed twice", o.ID)
			}
			status[o.ID] = o.Status
			k := o.ViewerID + "/" + o.IdempotencyKey
			if prev, dup := keys[k]; dup {
				t.Errorf("orders %s and %s share the buy key %s", prev, o.ID, k)
			}
			keys[k] = o.ID
			if _, told := confirmed[o.ID]; o.Status == overlay.OrderConfirmed && !told {
				t.Errorf("order %s is confirmed in the store but its buyer was never told", o.ID)
			}
			if o.Status == overlay.OrderReserved || o.Status == overlay.OrderConfirmed {
				held += o.Qty
			}
		}
		for id := range reserved {
			if _, ok := status[id]; !ok {
				t.Errorf("order %s was answered 200 reserved but is not in the store", id)
			}
		}
		for id := range confirmed {
			if status[id] != overlay.OrderConfirmed {
				t.Errorf("order %s was answered 200 confirmed but is %q in the store", id, status[id])
			}
		}
		p, err := st.Product(ctx, "drop-1")
		if err != nil {
			t.Fatal(err)
		}
		sale, err := st.ActiveSale(ctx, "demo", "drop-1", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if p.Stock+held != initial || sale.UnitsLeft+held != sale.Units {
			t.Errorf("units do not add up: stock %d + held %d, sale %d left of %d, want %d", p.Stock, held, sale.UnitsLeft, sale.Units, initial)
		}
		t.Logf("store: %d orders (%d units held), stock %d, sale %d/%d left", len(orders), held, p.Stock, sale.UnitsLeft, sale.Units)
		return status
	}
	status := checkStore(a.store)

	eventually(t, "the webhook gets every confirmed order", 20*time.Second, func() bool {
		return hook.hasAll(slices.Collect(maps.Keys(confirmed)))
	})

	// Stop the server; the file passes SQLite's own check.
	a.Close()
	dbFile := filepath.Join(data, "vitrine.db")
	db, err := sql.Open("sqlite", "file:"+dbFile+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	var check string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
		t.Errorf("PRAGMA integrity_check: %q %v", check, err)
	}
	db.Close()

	// Restart on the same data directory: the same orders, and buying works.
	b, base := testApp(tap, withData)
	if again := checkStore(b.store); fmt.Sprint(again) != fmt.Sprint(status) {
		t.Errorf("after the restart the store holds %d orders, %d before", len(again), len(status))
	}
	code, res, h := postJSON(t, base+"/api/v1/streams/demo/buy", "", map[string]any{"sku": "drop-1", "qty": 1, "key": "after-restart"})
	if code != 200 || res["outcome"] != "reserved" {
		t.Fatalf("buy after the restart: %d %v", code, res)
	}
	req, _ := http.NewRequest("POST", base+"/api/v1/orders/"+res["order"].(map[string]any)["id"].(string)+"/confirm", nil)
	req.Header.Set("Vitrine-Viewer", h.Get("Vitrine-Viewer"))
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 200 {
		t.Errorf("confirm after the restart: %d", r.StatusCode)
	}
}
