package loadtest

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"syscall"
)

// netns makes UDP sockets inside another network namespace without
// re-executing the tool there: a socket stays in the namespace it was made
// in, whatever thread uses it later. The thread that makes one enters the
// namespace (setns(2)) only for the socket and bind calls and goes back.
type netns struct {
	name         string
	ip           netip.Addr // the viewers' address in it
	target, home int        // namespace files: the one to enter, and this process's own
}

// openNetns opens the namespace name (made by `ip netns add name`) and this
// process's own, to come back to.
func openNetns(name string, ip netip.Addr) (*netns, error) {
	home, err := syscall.Open("/proc/self/ns/net", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("load: this process's network namespace: %w", err)
	}
	path := name
	if filepath.Base(name) == name {
		path = filepath.Join("/var/run/netns", name)
	}
	target, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		syscall.Close(home)
		return nil, fmt.Errorf("load: network namespace %s: %w (make it with ip netns add)", name, err)
	}
	n := &netns{name: name, ip: ip, target: target, home: home}
	// Fail now, not at each viewer's join, when this process may not enter it.
	c, err := n.listenUDP()
	if err != nil {
		n.close()
		return nil, err
	}
	c.Close()
	return n, nil
}

func setns(fd int) error {
	if _, _, errno := syscall.RawSyscall(sysSetns, uintptr(fd), syscall.CLONE_NEWNET, 0); errno != 0 {
		return errno
	}
	return nil
}

// listenUDP makes a UDP socket in the namespace, bound to its address with
// a free port. It runs on a goroutine of its own, locked to its thread: if
// that thread could not come back, it ends with the goroutine (the runtime
// does not reuse a thread left locked) instead of serving other goroutines
// in the wrong namespace.
func (n *netns) listenUDP() (*net.UDPConn, error) {
	type result struct {
		c   *net.UDPConn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := setns(n.target); err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, fmt.Errorf("load: enter network namespace %s: %w (needs root)", n.name, err)}
			return
		}
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(n.ip, 0)))
		if err != nil {
			err = fmt.Errorf("load: in network namespace %s: %w", n.name, err)
		}
		if berr := setns(n.home); berr != nil {
			if c != nil {
				c.Close()
			}
			done <- result{nil, fmt.Errorf("load: back from network namespace %s: %w", n.name, berr)}
			return // still locked: the thread ends
		}
		runtime.UnlockOSThread()
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

func (n *netns) close() {
	syscall.Close(n.target)
	syscall.Close(n.home)
}
