package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitrine-live/vitrine/media"
	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/signaling/cluster"
)

// joinCluster connects this node to the others (cluster.nats_url set) and
// ties the cluster to the HTTP edge and the streams.
func (a *app) joinCluster(reg prometheus.Registerer, om *overlay.Metrics) error {
	cc := a.cfg.Cluster
	c, err := cluster.Join(cluster.Config{
		NATSURL: cc.NATSURL, AdvertiseURL: cc.AdvertiseURL, NodeID: cc.NodeID, Secret: []byte(cc.Secret),
		MaxViewers: cc.MaxViewers, RelayGrace: cc.RelayGrace, ListenIP: a.cfg.WebRTC.ListenIP,
		Streams: a.liveStreams,
		Stream: func(name string) *media.Stream {
			_, st, _ := a.streams.Get(name)
			return st
		},
		Viewers: a.edge.ViewerCount,
		Pulls:   a.edge.PullCount,
		OnRelay: func(stream string) {
			// The origin runs the show now: a show here stops, and its
			// viewers reconnect here to get the relay's.
			a.edge.CloseShow(stream)
			a.edge.MoveViewers(stream, func() string { return cc.AdvertiseURL }, "relay")
		},
		OnStock:   a.edge.StockChanged,
		OnChat:    a.edge.ChatEvent,
		OnExpired: a.stockReturned,
		OnStreamsChanged: func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := a.streams.Reload(ctx); err != nil {
				a.log.Warn("cluster: reload stream definitions", "err", err)
			}
		},
		Show:       overlay.ShowConfig{Store: a.store, ReservationTTL: a.cfg.Commerce.ReservationTTL, Metrics: om, Log: a.log},
		Log:        a.log,
		Registerer: reg,
	})
	if err != nil {
		return err
	}
	a.cluster = c
	a.edge.SetCluster(c)
	changed := c.Changed
	a.nodeChanged.Store(&changed)
	a.streams.SetOnChange(c.StreamsChanged)
	// Hear from the other nodes before restoring shows: a stream whose
	// creator is on another node has its show there.
	time.Sleep(1500 * time.Millisecond)
	return nil
}

// liveStreams is this node's streams by name, for the cluster.
func (a *app) liveStreams() map[string]*media.Stream {
	out := map[string]*media.Stream{}
	for _, d := range a.streams.List() {
		if _, st, ok := a.streams.Get(d.Name); ok {
			out[d.Name] = st
		}
	}
	return out
}

// drain is what SIGTERM does on a node of a cluster: no new viewers (they
// are redirected, /readyz answers 503), the viewers here are asked to move
// to the least loaded node, and the node waits for them to leave, at most
// cluster.drain_timeout.
func (a *app) drain() {
	if a.cluster == nil {
		return
	}
	a.cluster.Drain()
	a.edge.SetDraining()
	asked := a.edge.MoveViewers("", a.cluster.Elsewhere, "draining")
	left := a.edge.DrainWait(a.cfg.Cluster.DrainTimeout)
	a.log.Info("cluster: drained", "viewers_asked", asked, "viewers_left", left)
}

// clusterViewerSecret is the key viewer tokens are signed with on every node
// of a cluster, derived from the shared node secret.
func clusterViewerSecret(secret string) []byte {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("vitrine viewer tokens"))
	return mac.Sum(nil)
}
