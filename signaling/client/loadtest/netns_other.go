//go:build !linux

package loadtest

import (
	"errors"
	"net"
	"net/netip"
)

// netns is Linux's; elsewhere a run with a namespace does not start.
type netns struct{ ip netip.Addr }

func openNetns(string, netip.Addr) (*netns, error) {
	return nil, errors.New("load: network namespaces are Linux's")
}

func (n *netns) listenUDP() (*net.UDPConn, error) { return nil, errors.New("no network namespaces") }

func (n *netns) close() {}
