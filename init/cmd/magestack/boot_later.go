package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"magestack/init/api"
	"magestack/init/bootreport"
	"magestack/init/cluster"
	"magestack/init/clusterconf"
	"magestack/init/configsource"
	"magestack/init/configstore"
	"magestack/init/failover"
	"magestack/init/firewall"
	"magestack/init/imagestore"
	"magestack/init/klog"
	"magestack/init/overlay"
	"magestack/init/pid1"
	"magestack/init/reconcile"
	"magestack/init/roleenv"
	"magestack/init/stackfile"
	"magestack/init/supervise"
	"magestack/init/volume"
	"magestack/init/vpn"
	"magestack/services"
	"magestack/services/render"
)

// The steps after the stack config load, in the contract's order: control
// API, firewall and VPN, role environments (or, on a paired host, the
// cluster that decides which instances run here), then live reconfiguration.
func init() {
	registerBootSteps(orderAPI, "api", func(b *bootEnv) []pid1.Step {
		if b.discovering() {
			return nil
		}
		return []pid1.Step{{Name: "api", Run: b.apiStep, Timeout: 10 * time.Second, Retry: pid1.Retry{Initial: time.Second, Max: 30 * time.Second}}}
	})
	registerBootSteps(orderFirewall, "firewall", func(b *bootEnv) []pid1.Step {
		if b.discovering() {
			return nil
		}
		return []pid1.Step{
			{Name: "firewall", Critical: true, Run: b.firewallStep, Timeout: time.Minute, Retry: pid1.Retry{Initial: time.Second, Max: 30 * time.Second}},
			{Name: "vpn", Run: b.vpnStep, Timeout: time.Minute, Retry: pid1.Retry{Initial: 2 * time.Second, Max: time.Minute}},
		}
	})
	registerBootSteps(orderRoles-5, "images", func(b *bootEnv) []pid1.Step {
		if b.discovering() {
			return nil
		}
		return []pid1.Step{{Name: "images", Run: b.imagesStep, Timeout: 5 * time.Minute, Retry: pid1.Retry{Initial: 5 * time.Second, Max: time.Minute}}}
	})
	registerBootSteps(orderRoles, "roles", func(b *bootEnv) []pid1.Step {
		if b.discovering() {
			return nil
		}
		return []pid1.Step{{Name: "roles", Critical: true, Run: b.rolesStep, Timeout: 10 * time.Minute, Retry: pid1.Retry{Initial: 2 * time.Second, Max: time.Minute}}}
	})
	registerBootSteps(orderCluster+10, "reconcile", func(b *bootEnv) []pid1.Step {
		if b.discovering() {
			return nil
		}
		return []pid1.Step{{Name: "reconcile", Run: b.reconcileStep, Timeout: 30 * time.Second}}
	})
}

// stateDir is where this host keeps state: the data disk when mounted
// there, else memory.
const stateDir = "/var/lib/magestack"

func (b *bootEnv) loadModule(ctx context.Context, name string) error {
	l := b.Modules()
	if l == nil {
		return errors.New("no module loader (kmod step failed)")
	}
	_, err := l.Load(ctx, name, "")
	return err
}

func (b *bootEnv) apiStep(ctx context.Context) error {
	ln, err := api.Listen(api.DefaultSocket)
	if err != nil {
		return fmt.Errorf("control API: %w", err)
	}
	srv := api.NewServer(api.Options{Timeline: b.TimelineSnapshot, Log: b.log})
	srv.AddStatus("secrets", b.secretStatus)
	srv.AddStatus("volumes", b.volumeStatuses)
	srv.Handle("POST /v1/volumes/event", http.HandlerFunc(b.serveVolumeEvent))
	srv.Handle("POST /v1/volumes/discard", http.HandlerFunc(b.serveVolumeDiscard))
	srv.Handle("POST /v1/volumes/accept-outdated", http.HandlerFunc(b.serveVolumeAcceptOutdated))
	srv.AddStatus("network", func(context.Context) (any, error) {
		if n := b.Network(); n != nil {
			return n.Snapshot(), nil
		}
		return nil, errors.New("network not up yet")
	})
	srv.AddStatus("cluster", func(context.Context) (any, error) {
		b.mu.Lock()
		m := b.cluster
		b.mu.Unlock()
		if m == nil {
			return nil, nil
		}
		return m.status(), nil
	})
	srv.Handle("POST /v1/failover", http.HandlerFunc(b.serveFailover))
	srv.Handle("GET /v1/maintenance", http.HandlerFunc(b.serveMaintenanceStatus))
	srv.Handle("POST /v1/maintenance", http.HandlerFunc(b.serveMaintenanceSet))
	srv.Handle("POST /v1/reload/{unit...}", http.HandlerFunc(b.serveReload))
	b.mu.Lock()
	b.api = srv
	b.mu.Unlock()
	pid1.Go(b.log, "control API", func() {
		if err := srv.ServeListener(b.ctx, ln); err != nil {
			b.log.Error("control API stopped", "err", err)
		}
	})
	return nil
}

// serveFailover is `magestack failover`: a planned move (--to) goes to the
// cluster leader, a forced takeover (--force) runs here.
func (b *bootEnv) serveFailover(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	m := b.cluster
	b.mu.Unlock()
	if m == nil {
		api.WriteError(w, http.StatusConflict, "this host is not in a pair: failover needs a paired host")
		return
	}
	var req failover.Request
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		api.WriteError(w, http.StatusBadRequest, "bad failover request: "+err.Error())
		return
	}
	if v := b.volumes(); v != nil && req.To != "" {
		// A planned move to a host whose copies are behind would stop the
		// site until they resync (or, without the check, serve old data).
		if err := v.readyFor(req.To); err != nil {
			api.WriteError(w, http.StatusConflict, fmt.Sprintf("failover --to %s refused: %v", req.To, err))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	rep, err := m.ctl.Submit(ctx, req, m.node.LeaderAddr())
	if err != nil {
		api.WriteError(w, http.StatusConflict, err.Error())
		return
	}
	api.WriteJSON(w, http.StatusOK, rep)
}

func (b *bootEnv) firewallStep(ctx context.Context) error {
	return firewall.ApplyForHost(ctx, b.Stack(), hostView(b.Stack(), b.Hostname(), b.provisioningServers()), b.log, b.loadModule)
}

// provisioningServers are the servers this host booted from, as the kernel
// command line names them (config and image sources): roles must not
// reach them, though the stack file may not mention them.
func (b *bootEnv) provisioningServers() []netip.Prefix {
	return firewall.ServerPrefixes(b.cmdline.Value("magestack.config"), b.cmdline.Value("magestack.images"))
}

// hostView tells the firewall about this host's own services: on a paired
// host the cluster ports, accepted on the pair link and from the stack's
// other hosts only; and the provisioning servers roles must not reach.
func hostView(st *stackfile.Stack, host string, servers []netip.Prefix) firewall.HostView {
	v := firewall.HostView{HostName: host, RoleForbidden: servers}
	h, _, ok := st.HostByName(host)
	if !ok || h.Pair == "" {
		return v
	}
	v.ClusterPorts = []services.Port{
		{Proto: "tcp", Port: clusterconf.RaftPort, Name: "raft"},
		{Proto: "udp", Port: clusterconf.HeartbeatPort, Name: "heartbeat"},
		{Proto: "tcp", Port: failover.RPCPort, Name: "cluster-rpc"},
	}
	// Each volume's DRBD replication port.
	if plan, err := volume.PlanFor(st, host, volumePaths(), nil); err == nil {
		for _, p := range plan.Ports() {
			v.ClusterPorts = append(v.ClusterPorts, services.Port{Proto: "tcp", Port: p, Name: "drbd"})
		}
	}
	if h.PairLink != nil {
		if name, err := linkByMAC(h.PairLink.MAC); err == nil {
			v.PairIfaces = []string{name}
		}
	}
	return v
}

func (b *bootEnv) vpnStep(ctx context.Context) error {
	return vpn.UpForStack(ctx, b.Stack(), b.stackSecret(), b.log, b.loadModule)
}

// publishedImages is where verified role images are linked for roleenv.
const publishedImages = "/run/magestack/images"

// imagesStep verifies the role images on the MAGESTACK-IMAGES disk and
// publishes them, the built-in images staying as the fallback. Without such
// a disk, the images this host runs come from the image server
// (magestack.images=) through the cache on the persistent disk, or from
// that cache alone when the server is gone; with neither, the roles run on
// the built-in images.
func (b *bootEnv) imagesStep(ctx context.Context) error {
	for _, m := range []string{"loop", "squashfs", "ext4"} {
		if err := b.loadModule(ctx, m); err != nil {
			b.log.Warn("images: module", "module", m, "err", err)
		}
	}
	store, err := imagestore.Open(ctx, b.log, imagestore.Options{})
	var missing []string
	if store == nil {
		url := b.cmdline.Value(imagestore.CmdlineKey)
		names, nerr := imagestore.Needed(b.Stack(), b.Hostname(), b.testImage())
		if nerr != nil {
			return fmt.Errorf("images: %w", nerr)
		}
		if url == "" && !imagestore.HasCache(imagestore.DefaultCacheDir) {
			if len(names) == 0 {
				b.log.Info("images: no MAGESTACK-IMAGES disk; this host's roles run the built-in image", "why", err)
				return nil
			}
			// Said on the console and in the boot timeline: the roles that
			// need these images stay down rather than serve a stand-in.
			return fmt.Errorf("images: this host's roles need the images %s, and there is no MAGESTACK-IMAGES disk "+
				"(make images builds build/images.img) nor magestack.images= URL (%v)", strings.Join(names, ","), err)
		}
		if !isMountPoint(stateDir) {
			b.log.Warn("images: no data disk: the image cache is in memory and lost at reboot")
		}
		var res imagestore.FetchResult
		store, res, err = imagestore.Fetch(ctx, b.log, imagestore.FetchOptions{
			URL: url, CacheDir: imagestore.DefaultCacheDir, Names: names, RetryFor: 2 * time.Minute})
		if store == nil {
			return fmt.Errorf("images: %w", err)
		}
		missing = res.Missing
	}
	if err != nil {
		// Refused images are named; the others are usable.
		b.log.Error("images: some images refused", "err", err)
	}
	if err := store.Publish(publishedImages, roleenv.DefaultImageRoot); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	b.mu.Lock()
	b.imageRoot = publishedImages
	b.mu.Unlock()
	b.log.Info("images: verified and published", "images", strings.Join(store.Names(), ","))
	if len(missing) > 0 {
		return fmt.Errorf("images: still missing %s: %w", strings.Join(missing, ","), err)
	}
	return nil
}

// roleOptions says where role environments keep their state (volumes on the
// data disk when there is one), which images they run and how their
// configuration is rendered from the stack file (with the values derived
// from the stack secret).
func (b *bootEnv) roleOptions() roleenv.Options {
	opts := roleenv.Options{DefaultImage: b.testImage()}
	if v := b.volumes(); v != nil {
		opts.Volumes = v
	}
	opts.Render = render.FuncWith(render.Options{Secrets: secretsOf{b}, Maintenance: b.maintenanceOn})
	b.mu.Lock()
	if b.imageRoot != "" {
		opts.ImageRoot = b.imageRoot
	}
	b.mu.Unlock()
	return opts
}

// testImage is the magestack.test.image hook: the image roles that name
// none run instead of their real images ("" without the hook). Scenarios
// about boot, supervision or the cluster run the small built-in image.
func (b *bootEnv) testImage() string { return b.cmdline.Value("magestack.test.image") }

func isMountPoint(dir string) bool {
	var a, p os.FileInfo
	var err error
	if a, err = os.Stat(dir); err != nil {
		return false
	}
	if p, err = os.Stat(filepath.Dir(dir)); err != nil {
		return false
	}
	return !os.SameFile(a, p) && deviceOf(a) != deviceOf(p)
}

// rolesStep starts this host's role instances. A single host runs every
// instance the stack file places on it; a paired host joins the cluster,
// whose failover controller runs the instances this host owns.
func (b *bootEnv) rolesStep(ctx context.Context) error {
	st := b.Stack()
	host := b.Hostname()
	b.mu.Lock()
	sup := b.sup
	b.mu.Unlock()
	if sup == nil {
		sup = supervise.New(b.log, supervise.Options{
			LogPath: func(u string) string { return filepath.Join(roleenv.DefaultLogRoot, u, u+".log") },
			Starter: b.reaper,
		})
		b.mu.Lock()
		b.sup = sup
		srv := b.api
		b.mu.Unlock()
		opts := b.roleOptions()
		if srv != nil {
			srv.SetUnits(sup, opts.ServiceSocket)
		}
		// Registered first, so it runs after the roles stopped.
		b.shutdown.OnShutdown("volumes", 30*time.Second, func(ctx context.Context) error {
			if v := b.volumes(); v != nil {
				return v.releaseAll(ctx)
			}
			return nil
		})
		b.shutdown.OnShutdown("roles", roleenv.StopGrace+30*time.Second, func(ctx context.Context) error {
			b.mu.Lock()
			m := b.cluster
			b.mu.Unlock()
			if m != nil {
				m.stop()
			}
			return sup.StopAll(ctx)
		})
	}
	if _, _, ok := st.HostByName(host); !ok {
		if len(st.Hosts) != 1 {
			return fmt.Errorf("roles: this host %q is not in stack %s: set magestack.host= or list its MAC", host, st.Name)
		}
		// A one-host stack (the built-in default among them) is this
		// machine's whatever its MAC: adopt the name rather than run nothing.
		b.log.Warn("roles: this machine is not named in the stack file; taking its only host's place",
			"was", host, "host", st.Hosts[0].Name)
		if err := b.setHostname(st.Hosts[0].Name, "the stack's only host"); err != nil {
			return err
		}
		host = st.Hosts[0].Name
	}
	// Instances whose volume is ready start; the others say why.
	if failed, err := b.ensureVolumes(ctx, st, host, ""); err != nil {
		b.log.Error("roles: no volumes", "err", err)
	} else if err := failed.all(); err != nil {
		b.log.Error("roles: some volumes are not ready", "err", err)
	}
	opts := b.roleOptions()
	b.overlayUp(st, host)
	if pairedHost(st, host) {
		return b.clusterRoles(ctx, st, host, sup, opts)
	}
	if len(sup.Names()) == 0 {
		if _, err := roleenv.AddHostRoles(b.log, opts, st, host, sup); err != nil {
			return err
		}
	}
	if err := sup.StartAll(ctx); err != nil {
		return fmt.Errorf("roles: %w", err)
	}
	if err := sup.WaitReady(ctx, sup.Names()...); err != nil {
		return fmt.Errorf("roles: not every role became ready: %w", err)
	}
	return nil
}

// clusterRoles joins the cluster and waits until this host runs what it
// owns (a standby owns nothing and is ready at once).
func (b *bootEnv) clusterRoles(ctx context.Context, st *stackfile.Stack, host string, sup *supervise.Supervisor, opts roleenv.Options) error {
	b.mu.Lock()
	m := b.cluster
	b.mu.Unlock()
	if m == nil {
		_, idx, _ := st.HostByName(host)
		gw, err := st.HostBridgeAddr(idx)
		if err != nil {
			return err
		}
		if err := roleenv.EnsureBridge(netns.None(), roleenv.DefaultBridge, netip.PrefixFrom(gw, st.Internal.Bits())); err != nil {
			return err
		}
		if err := roleenv.EnableForwarding(netns.None()); err != nil {
			return err
		}
		dataDir := ""
		if isMountPoint(stateDir) {
			dataDir = filepath.Join(stateDir, "cluster")
		}
		// Settings arrive while raft replays its log inside startCluster,
		// before m exists: the pending signal waits in the channel. A
		// started instance is checked against the maintenance switches.
		settingsChanged := make(chan struct{}, 1)
		poke := func() {
			select {
			case settingsChanged <- struct{}{}:
			default:
			}
		}
		hooks := clusterHooks{OnSetting: func(cluster.Setting) { poke() }, OnStarted: func(string) { poke() },
			BeforeRun: func(m *clusterMember) {
				if v := b.volumes(); v != nil {
					v.setFence(clusterVolumeFence(m, host, pairOf(st, host)))
				}
			}}
		creds, err := b.clusterCredentials(host)
		if err != nil {
			return err
		}
		m, err = startCluster(b.ctx, b.log, st, host, creds, sup, opts, dataDir, b.publicLink, hooks)
		if err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		b.mu.Lock()
		b.cluster = m
		b.mu.Unlock()
		pid1.Go(b.log, "cluster maintenance switches", func() {
			b.followClusterMaintenance(b.ctx, m.node.Settings, settingsChanged)
		})
	}
	for {
		if m.ctl.Settled() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: this host's instances not running yet: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// overlayUp spans the internal network over the hosts (VXLAN on ms-int),
// so an instance reaches another at its fixed address wherever it runs.
func (b *bootEnv) overlayUp(st *stackfile.Stack, host string) {
	cfg, ok, err := overlay.ConfigFor(st, host)
	if err != nil {
		b.log.Warn("overlay: the internal network stays local to this host", "err", err)
		return
	}
	if !ok {
		return
	}
	_, idx, _ := st.HostByName(host)
	if gw, err := st.HostBridgeAddr(idx); err == nil {
		if err := roleenv.EnsureBridge(netns.None(), roleenv.DefaultBridge, netip.PrefixFrom(gw, st.Internal.Bits())); err != nil {
			b.log.Warn("overlay: bridge", "err", err)
			return
		}
	}
	if err := overlay.Up(netns.None(), cfg); err != nil {
		b.log.Warn("overlay: the internal network stays local to this host", "err", err)
	}
}

// publicLink is the interface that carries the default route (the uplink
// the VIP goes on).
func (b *bootEnv) publicLink() string {
	if ifs, err := firewall.PublicIfaces(); err == nil && len(ifs) > 0 {
		return ifs[0]
	}
	return "eth0"
}

// reconcileStep follows the config source: each new revision is applied as
// a difference, and a failing one is rolled back.
func (b *bootEnv) reconcileStep(ctx context.Context) error {
	st, rev := b.Stack(), b.Revision()
	store, err := configstore.Open(configstore.DefaultDir)
	if err != nil {
		b.log.Warn("config: no store for revisions; history is not kept", "err", err)
		store = nil
	}
	b.mu.Lock()
	sup, srv := b.sup, b.api
	b.mu.Unlock()
	host := b.Hostname()
	servers := b.provisioningServers()
	fw := firewall.New()
	appliers := reconcile.Appliers{
		Firewall: func(ctx context.Context, s *stackfile.Stack) error {
			return firewall.ApplyForHost(ctx, s, hostView(s, host, servers), b.log, b.loadModule)
		},
		Allow: func(ctx context.Context, add, remove []netip.Prefix) error {
			return fw.UpdateAllow(ctx, add, remove)
		},
		VPN: func(ctx context.Context, s *stackfile.Stack, _ *stackfile.Changes) error {
			return vpn.UpForStack(ctx, s, b.stackSecret(), b.log, b.loadModule)
		},
	}
	var final reconcile.Appliers
	if sup != nil && !pairedHost(st, host) {
		appliers.StopInstance = func(ctx context.Context, inst stackfile.Instance) error {
			if inst.Host != host {
				return nil
			}
			return sup.Remove(ctx, inst.Name)
		}
		appliers.StartInstance = func(ctx context.Context, s *stackfile.Stack, inst stackfile.Instance) error {
			if inst.Host != host {
				return nil
			}
			// The revision's volumes first: a new instance's is created, a
			// changed size applied (a shrink refuses the revision).
			failed, err := b.ensureVolumes(ctx, s, host, inst.Name)
			if err == nil {
				err = failed.of(inst.Name)
			}
			if err != nil {
				return err
			}
			_, idx, _ := s.HostByName(host)
			env, err := roleenv.New(b.log, b.roleOptions(), s, idx, inst)
			if err != nil {
				return err
			}
			if _, err := sup.Unit(inst.Name); errors.Is(err, supervise.ErrUnknownUnit) {
				if err := sup.Add(env.Unit()); err != nil {
					return err
				}
			}
			if err := sup.Start(ctx, inst.Name); err != nil {
				return err
			}
			return sup.WaitReady(ctx, inst.Name)
		}
		// A change a reload cannot apply re-creates the instance through
		// the final appliers (lb following web instances included).
		onHost := func(inst stackfile.Instance) bool { return inst.Host == host }
		appliers.UpdateInstance = b.updateByReload(onHost,
			func(ctx context.Context, inst stackfile.Instance) error { return final.StopInstance(ctx, inst) },
			func(ctx context.Context, s *stackfile.Stack, inst stackfile.Instance) error {
				return final.StartInstance(ctx, s, inst)
			})
	}
	lbs := b.newLBSync(sup, st, host) // lb follows web instances (face_scale.go)
	if sup != nil && pairedHost(st, host) {
		b.mu.Lock()
		m := b.cluster
		b.mu.Unlock()
		if m != nil {
			lbs = b.newPairLBSync(sup, m.rt)
			appliers.UpdateInstance = b.pairUpdate(m.rt)
			appliers.Instances = b.pairInstances(m, lbs)
		}
	}
	final = lbs.wrap(appliers)
	r := reconcile.New(b.log, store, final)
	b.wireScale(r, srv, lbs)
	if err := r.Booted(st, rev); err != nil {
		b.log.Warn("config: recording the booted revision", "err", err)
	}
	b.mu.Lock()
	b.running = func() *stackfile.Stack { s, _ := r.Running(); return s }
	b.mu.Unlock()
	source, every, fetcher := reconcile.PollSettings(st, b.cmdline.Value("magestack.config"), configsource.Options{Logger: b.log})
	live := &reconcile.Live{Reconciler: r, Fetcher: fetcher, Source: source, Store: store}
	if srv != nil {
		live.Register(srv)
	}
	if polled(source) {
		w := r.Watcher(b.ctx, fetcher, source, every)
		pid1.Go(b.log, "config watcher", func() {
			if err := w.Run(b.ctx); err != nil && b.ctx.Err() == nil {
				b.log.Error("config watcher stopped", "err", err)
			}
		})
	}
	if url := b.cmdline.Value("magestack.report"); url != "" {
		pid1.Go(b.log, "boot report", func() {
			rctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
			defer cancel()
			// Reported here, the last step: the ready line follows at once.
			if err := bootreport.Send(rctx, url, bootreport.Report{Host: host, MAC: firstMAC(b), Event: "ready", UptimeMS: klog.UptimeMS()}); err != nil {
				b.log.Warn("boot report", "err", err)
			}
		})
	}
	return nil
}

// polled reports whether a config source can change under a running host
// (a URL or a Git repository, not a file inside the initramfs).
func polled(source string) bool {
	return strings.HasPrefix(source, "http://") || strings.HasPrefix(source, "https://") || strings.HasPrefix(source, "git+")
}

func deviceOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev)
	}
	return 0
}

func firstMAC(b *bootEnv) string {
	if macs := bootMACs(b.cmdline); len(macs) > 0 {
		return macs[0]
	}
	return ""
}
