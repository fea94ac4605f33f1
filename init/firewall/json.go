package firewall

// View is the ruleset as plain data for `firewall show -o json`: each rule
// as its nft text (counter left out) with its counter values apart, so
// monitoring can read packet counts per rule.
type View struct {
	Table  string      `json:"table"`
	Sets   []SetView   `json:"sets"`
	Chains []ChainView `json:"chains"`
}

// SetView is one named set.
type SetView struct {
	Name     string   `json:"name"`
	Flags    []string `json:"flags,omitempty"`
	Elements []string `json:"elements"`
}

// ChainView is one base chain.
type ChainView struct {
	Name     string     `json:"name"`
	Type     string     `json:"type"`
	Hook     string     `json:"hook"`
	Priority int        `json:"priority"`
	Policy   string     `json:"policy"`
	Rules    []RuleView `json:"rules"`
}

// RuleView is one rule.
type RuleView struct {
	Rule    string `json:"rule"`
	Comment string `json:"comment,omitempty"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// ViewOf converts rs for JSON output.
func ViewOf(rs *Ruleset) View {
	v := View{Table: "inet " + TableName, Sets: []SetView{}, Chains: []ChainView{}}
	for _, s := range rs.Sets {
		sv := SetView{Name: s.Name, Elements: []string{}}
		if s.Interval {
			sv.Flags = append(sv.Flags, "interval")
		}
		if s.Dynamic {
			sv.Flags = append(sv.Flags, "dynamic")
		}
		for _, e := range s.Elements {
			sv.Elements = append(sv.Elements, prefixText(e))
		}
		v.Sets = append(v.Sets, sv)
	}
	for _, c := range rs.Chains {
		cv := ChainView{Name: c.Name, Type: c.Type, Hook: c.Hook, Priority: c.Priority, Policy: c.Policy, Rules: []RuleView{}}
		for _, r := range c.Rules {
			rv := RuleView{Comment: r.Comment}
			var rest []Stmt
			for _, s := range r.Stmts {
				if cnt, ok := s.(Counter); ok {
					rv.Packets, rv.Bytes = cnt.Packets, cnt.Bytes
					continue
				}
				rest = append(rest, s)
			}
			rv.Rule = Rule{Stmts: rest}.String()
			cv.Rules = append(cv.Rules, rv)
		}
		v.Chains = append(v.Chains, cv)
	}
	return v
}
