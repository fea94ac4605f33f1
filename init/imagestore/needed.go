package imagestore

import (
	"slices"

	"magestack/init/stackfile"
	"magestack/services"
)

// Needed lists the images host runs its role instances from (sorted, no
// duplicates), leaving out the built-in image; fallback is the image of
// roles that name none ("" their real image, see services.ImageFor). A paired host also
// needs its peer's images: it takes the peer's instances over when the peer
// is lost, possibly with the image server gone too. A host the stack does
// not name is taken as the only host of a one-host stack (as the roles step
// does); otherwise it needs nothing.
func Needed(st *stackfile.Stack, host, fallback string) ([]string, error) {
	h, _, ok := st.HostByName(host)
	if !ok {
		if len(st.Hosts) != 1 {
			return nil, nil
		}
		h = &st.Hosts[0]
	}
	hosts := map[string]bool{h.Name: true}
	if h.Pair != "" {
		hosts[h.Pair] = true
	}
	insts, err := st.Instances()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, in := range insts {
		if !hosts[in.Host] {
			continue
		}
		img := services.ImageFor(in.Role, st.Roles[in.Role].Image, fallback)
		if img == services.BuiltinImage {
			continue
		}
		out = append(out, img)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
