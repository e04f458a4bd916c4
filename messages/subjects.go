package messages

// Subjects (NATS). Region names are lowercase letters, digits and '-' (see
// [IsName]), so each is one subject token; a Type contains one '.', so it
// is two.

// OutboxSubject is where region src's worker publishes a message for dst:
// mrk.<src>.out.<dst>.<type>.
func OutboxSubject(src, dst string, t Type) string {
	return "mrk." + src + ".out." + dst + "." + string(t)
}

// InboxSubject is where the proxy delivers a message from src to dst:
// mrk.<dst>.in.<src>.<type>.
func InboxSubject(dst, src string, t Type) string {
	return "mrk." + dst + ".in." + src + "." + string(t)
}
