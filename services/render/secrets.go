package render

// Secrets hands out the stack's generated values: database passwords shared
// by db and web, the self-signed certificate lb serves. The product's are
// derived from the stack secret (init/stacksecret), so every host of the
// stack renders the same ones.
type Secrets interface {
	// Secret returns the password called name.
	Secret(name string) (string, error)
	// SelfSigned returns a PEM certificate and key for hosts.
	SelfSigned(name string, hosts []string) (cert, key string, err error)
}
