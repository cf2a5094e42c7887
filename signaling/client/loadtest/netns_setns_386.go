//go:build linux

package loadtest

// sysSetns is setns(2)'s number (see netns_setns_amd64.go).
const sysSetns = 346
