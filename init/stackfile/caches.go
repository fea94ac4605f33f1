package stackfile

import "slices"

// DefaultCacheName names the Redis or Memcached instance db runs when the
// stack file lists none of that kind.
const DefaultCacheName = "default"

// RedisInstances are db's Redis instances as they run: the listed ones
// (ports defaulted at parse), or one named "default" on 6379 when none is
// listed. Rendering, the firewall and the diff all read this one list.
func (s *Stack) RedisInstances() []Cache {
	return cachesOrDefault(s.Roles["db"].Redis, 6379)
}

// MemcachedInstances are db's Memcached instances as they run, likewise
// with a default on 11211.
func (s *Stack) MemcachedInstances() []Cache {
	return cachesOrDefault(s.Roles["db"].Memcached, 11211)
}

func cachesOrDefault(list []Cache, port uint16) []Cache {
	if len(list) == 0 {
		return []Cache{{Name: DefaultCacheName, Port: port}}
	}
	return slices.Clone(list)
}

// CachePorts lists the ports db's caches listen on, sorted: the firewall
// opens exactly these from web and acc to db.
func (s *Stack) CachePorts() []uint16 {
	var ports []uint16
	for _, c := range append(s.RedisInstances(), s.MemcachedInstances()...) {
		ports = append(ports, c.Port)
	}
	slices.Sort(ports)
	return ports
}
