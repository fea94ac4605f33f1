package failover

import (
	"magestack/init/cluster"
	"magestack/init/clusterauth"
	"magestack/init/stacksecret"
)

// testSecret is the stack secret of every test cluster in this package.
var testSecret = func() stacksecret.Secret {
	s, err := stacksecret.New()
	if err != nil {
		panic(err)
	}
	return s
}()

// testCreds are member's credentials of the test stack.
func testCreds(member string) *clusterauth.Credentials {
	c, err := clusterauth.Derive(testSecret, member)
	if err != nil {
		panic(err)
	}
	return c
}

// withTLS gives cfg its member's credentials of the test stack.
func withTLS(cfg cluster.Config) cluster.Config {
	var ids []string
	for _, m := range cfg.Members {
		ids = append(ids, m.ID)
	}
	c := testCreds(cfg.ID)
	cfg.ServerTLS = c.ServerConfig(ids)
	cfg.ClientTLS = c.ClientConfig(ids, "")
	return cfg
}
