// Command kstatus reads Kubernetes objects on stdin and prints how GitOps tools judge
// their health: kstatus's status.Compute (sigs.k8s.io/cli-utils, what Flux's health
// checks and kpt use) and, with -argocd-health FILE, an Argo CD Lua health check run
// the way Argo CD runs one.
//
//	kubectl get accessrequests -o json | kstatus -argocd-health deploy/gitops/argocd/health.lua
//
// Input: JSON or YAML, one object, a list (anything with `items`, e.g. kubectl's
// `kind: List`), or several documents. Output: a JSON array, one entry per object in
// input order:
//
//	{"kind","namespace","name","resourceVersion",
//	 "kstatus":{"status","message"},          // status.Compute
//	 "argocd":{"status","message"}}           // only with -argocd-health
//
// Exit status 0 when every object was judged, 1 on unreadable input or a script that
// does not run (the message says which object), 2 on usage errors.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type result struct {
	Kind            string   `json:"kind"`
	Namespace       string   `json:"namespace,omitempty"`
	Name            string   `json:"name"`
	ResourceVersion string   `json:"resourceVersion,omitempty"`
	Kstatus         verdict  `json:"kstatus"`
	Argocd          *verdict `json:"argocd,omitempty"`
}

func main() {
	script := flag.String("argocd-health", "", "an Argo CD health check (Lua) to run on each object as well")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: kstatus [-argocd-health FILE] < objects.{json,yaml}")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout, *script); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, scriptPath string) error {
	var script string
	if scriptPath != "" {
		b, err := os.ReadFile(scriptPath)
		if err != nil {
			return err
		}
		script = string(b)
	}
	objects, err := readObjects(in)
	if err != nil {
		return err
	}
	results := make([]result, 0, len(objects))
	for i, u := range objects {
		r := result{
			Kind:            u.GetKind(),
			Namespace:       u.GetNamespace(),
			Name:            u.GetName(),
			ResourceVersion: u.GetResourceVersion(),
		}
		computed, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("object %d (%s): kstatus: %w", i, u.GetName(), err)
		}
		r.Kstatus = verdict{Status: computed.Status.String(), Message: computed.Message}
		if script != "" {
			health, err := argocdHealth(u, script)
			if err != nil {
				return fmt.Errorf("object %d (%s): health check: %w", i, u.GetName(), err)
			}
			r.Argocd = health
		}
		results = append(results, r)
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(results)
}

// readObjects decodes every document of the stream, flattening lists.
func readObjects(in io.Reader) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bufio.NewReader(in), 4096)
	var objects []*unstructured.Unstructured
	for doc := 0; ; doc++ {
		var m map[string]interface{}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objects, nil
			}
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		if m == nil {
			continue // an empty YAML document
		}
		if items, ok := m["items"]; ok {
			list, ok := items.([]interface{})
			if !ok {
				return nil, fmt.Errorf("document %d: items is not a list", doc)
			}
			for j, item := range list {
				obj, ok := item.(map[string]interface{})
				if !ok {
					return nil, fmt.Errorf("document %d: item %d is not an object", doc, j)
				}
				objects = append(objects, normalized(obj))
			}
			continue
		}
		objects = append(objects, normalized(m))
	}
}

// normalized gives the object the types the apiserver's clients see (int64 for whole
// numbers, as unstructured JSON decoding does), whatever the input format gave.
func normalized(m map[string]interface{}) *unstructured.Unstructured {
	b, err := json.Marshal(m)
	if err == nil {
		u := &unstructured.Unstructured{}
		if err = u.UnmarshalJSON(b); err == nil {
			return u
		}
	}
	return &unstructured.Unstructured{Object: m}
}

// The health statuses Argo CD knows; any other value it reports as Unknown.
var argocdStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

// argocdHealth runs a health script as Argo CD does (util/lua in argo-cd): a fresh VM
// without the standard libraries but the package, base and table ones (no string, no
// io, no os here: a script that needs them fails loudly rather than passing a test
// Argo CD would fail), the object as the global `obj`, a one-second budget, and the
// table the chunk returns read as {status, message}.
func argocdHealth(u *unstructured.Unstructured, script string) (*verdict, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, u.Object))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	ret := l.Get(-1)
	switch ret.Type() {
	case lua.LTNil:
		// Argo CD: an empty health status (it then uses its own default).
		return &verdict{}, nil
	case lua.LTTable:
	default:
		return nil, fmt.Errorf("the script returned a %s, not a table", ret.Type())
	}
	t := ret.(*lua.LTable)
	v := &verdict{}
	if s, ok := t.RawGetString("status").(lua.LString); ok {
		v.Status = string(s)
	}
	if m, ok := t.RawGetString("message").(lua.LString); ok {
		v.Message = string(m)
	}
	if !argocdStatuses[v.Status] {
		return &verdict{Status: "Unknown", Message: fmt.Sprintf("invalid health status %q", v.Status)}, nil
	}
	return v, nil
}

// toLua converts decoded JSON as Argo CD does: objects and arrays to tables (arrays
// 1-based), numbers to numbers, null to nil.
func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch v := v.(type) {
	case map[string]interface{}:
		t := l.NewTable()
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	case []interface{}:
		t := l.NewTable()
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case nil:
		return lua.LNil
	default:
		return lua.LString(fmt.Sprint(v))
	}
}
