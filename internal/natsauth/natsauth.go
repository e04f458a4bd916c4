// Package natsauth defines the NATS users and permissions of each role of a
// region's cluster (docs/OPERATIONS.md, "NATS users and permissions"):
//
//   - worker: its region's JetStream (streams, consumers, KV), its outbox,
//     events and dead letters, and the request API it serves;
//   - proxy: JetStream consumers on the outbox, publishing into the inbox
//     and the proxy dead-letter subject;
//   - client: the request API and request events, reading audit events —
//     and nothing else: no outbox, inbox, KV or JetStream API, so a client
//     cannot inject protocol messages or read state.
//
// Each region has its own cluster, so "its region" is the server's own.
// The JetStream API ($JS.API.>) is granted whole to workers and proxies:
// NATS permissions cannot express "only these streams" for every API call,
// and a proxy or worker host is trusted with its cluster's JetStream
// anyway (docs/THREAT-MODEL.md says what that host can and cannot do).
package natsauth

import (
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/nats-io/nats-server/v2/server"
)

// Roles.
const (
	RoleWorker = "worker"
	RoleProxy  = "proxy"
	RoleClient = "client"
)

// Permissions returns the permissions of role on region's cluster.
func Permissions(role, region string) *server.Permissions {
	switch role {
	case RoleWorker:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				"$JS.API.>", "$JS.ACK.>", "$JS.FC.>",
				"$KV." + layout.KeysBucket(region) + ".>",
				"$KV." + layout.ReplBucket(region) + ".>",
				"$KV." + layout.ReplayBucket(region) + ".>",
				"$KV." + layout.PendingBucket(region) + ".>",
				"mrk." + region + ".out.>",
				layout.EventsWildcard(region),
				layout.DLQWildcard(region),
				"$SRV.>", "_INBOX.>",
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{
				"mrk." + region + ".api.>", "$SRV.>", "_INBOX.>",
			}},
			Response: &server.ResponsePermission{MaxMsgs: 1},
		}
	case RoleProxy:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				"$JS.API.>", "$JS.ACK.>", "$JS.FC.>",
				"mrk." + region + ".in.>",
				layout.DLQSubject(region, "proxy"),
				"mrk." + region + ".heartbeat.>", // end-to-end probes (proxy/heartbeat.go)
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", "mrk." + region + ".heartbeat.>"}},
		}
	case RoleClient:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				"mrk." + region + ".api.>", layout.RequestsWildcard(region),
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", layout.EventsWildcard(region)}},
		}
	}
	return nil
}

// Users returns one user per role for region's cluster, plus an optional
// admin with no restrictions (tests), with the given passwords (by role
// name; "admin" for the admin).
func Users(region string, passwords map[string]string) []*server.User {
	var users []*server.User
	for _, role := range []string{RoleWorker, RoleProxy, RoleClient} {
		users = append(users, &server.User{Username: role, Password: passwords[role], Permissions: Permissions(role, region)})
	}
	if pw, ok := passwords["admin"]; ok {
		users = append(users, &server.User{Username: "admin", Password: pw})
	}
	return users
}
