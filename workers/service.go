package workers

import (
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
)

// apiService serves the request API's subjects and answers the NATS
// micro discovery protocol for them ($SRV.PING, $SRV.INFO and $SRV.STATS,
// for all services, by name and by id), so that `nats micro ls|info|stats
// mrkrepl` show the worker as one instance of the service "mrkrepl".
//
// It does not use micro's own service: micro counts a request (its
// errors, its processing time) while its handler runs, one request at a
// time per endpoint, and the API's requests are served concurrently (a
// slow HSM call must not hold up the others of the same endpoint). So the
// stats are kept here, for each request from its arrival to its answer,
// and sent in micro's own types.
type apiService struct {
	id       string
	identity micro.ServiceIdentity
	desc     string
	started  time.Time

	mu        sync.Mutex
	endpoints []*micro.EndpointStats // sorted by name
	byName    map[string]*micro.EndpointStats
	subs      []*nats.Subscription
}

// newAPIService returns a service with no endpoints yet.
func newAPIService(version, description string, metadata map[string]string) *apiService {
	id := nuid.Next()
	return &apiService{
		id: id,
		identity: micro.ServiceIdentity{
			Name: "mrkrepl", ID: id, Version: version, Metadata: metadata,
		},
		desc:    description,
		started: time.Now().UTC(),
		byName:  map[string]*micro.EndpointStats{},
	}
}

// addEndpoint serves subject (queue group micro.DefaultQueueGroup, shared
// with the region's other workers) with handle, which gets the request and
// must answer it; name is the endpoint's name in the stats.
func (s *apiService) addEndpoint(nc *nats.Conn, name, subject string, handle func(*nats.Msg)) error {
	st := &micro.EndpointStats{Name: name, Subject: subject, QueueGroup: micro.DefaultQueueGroup}
	s.mu.Lock()
	s.byName[name] = st
	s.endpoints = append(s.endpoints, st)
	slices.SortFunc(s.endpoints, func(a, b *micro.EndpointStats) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	s.mu.Unlock()
	sub, err := nc.QueueSubscribe(subject, micro.DefaultQueueGroup, handle)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.subs = append(s.subs, sub)
	s.mu.Unlock()
	return nil
}

// record counts one answered request of endpoint name: how long it took
// from its arrival, and its error code and description if it failed.
func (s *apiService) record(name string, took time.Duration, code, detail string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.byName[name]
	if st == nil {
		return
	}
	st.NumRequests++
	st.ProcessingTime += took
	st.AverageProcessingTime = st.ProcessingTime / time.Duration(st.NumRequests)
	if code != "" {
		st.NumErrors++
		st.LastError = code + ":" + detail // micro's own form
	}
}

// startDiscovery answers $SRV.<verb>, $SRV.<verb>.mrkrepl and
// $SRV.<verb>.mrkrepl.<id> for PING, INFO and STATS.
func (s *apiService) startDiscovery(nc *nats.Conn) error {
	for _, verb := range []micro.Verb{micro.PingVerb, micro.InfoVerb, micro.StatsVerb} {
		for _, subj := range []struct{ name, id string }{{"", ""}, {s.identity.Name, ""}, {s.identity.Name, s.id}} {
			subject, err := micro.ControlSubject(verb, subj.name, subj.id)
			if err != nil {
				return err
			}
			verb := verb
			sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
				b, err := json.Marshal(s.discovery(verb))
				if err == nil {
					_ = m.Respond(b)
				}
			})
			if err != nil {
				return err
			}
			s.mu.Lock()
			s.subs = append(s.subs, sub)
			s.mu.Unlock()
		}
	}
	return nil
}

// discovery is the answer to verb, in micro's types.
func (s *apiService) discovery(verb micro.Verb) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch verb {
	case micro.PingVerb:
		return micro.Ping{ServiceIdentity: s.identity, Type: micro.PingResponseType}
	case micro.InfoVerb:
		info := micro.Info{ServiceIdentity: s.identity, Type: micro.InfoResponseType, Description: s.desc, Endpoints: []micro.EndpointInfo{}}
		for _, e := range s.endpoints {
			info.Endpoints = append(info.Endpoints, micro.EndpointInfo{Name: e.Name, Subject: e.Subject, QueueGroup: e.QueueGroup})
		}
		return info
	default:
		stats := micro.Stats{ServiceIdentity: s.identity, Type: micro.StatsResponseType, Started: s.started, Endpoints: []*micro.EndpointStats{}}
		for _, e := range s.endpoints {
			c := *e
			stats.Endpoints = append(stats.Endpoints, &c)
		}
		return stats
	}
}

// stop drains every subscription: requests already received are still
// served (the worker's Stop then waits for them).
func (s *apiService) stop() {
	s.mu.Lock()
	subs := s.subs
	s.subs = nil
	s.mu.Unlock()
	for _, sub := range subs {
		_ = sub.Drain()
	}
}
