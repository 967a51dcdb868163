// Command kubevirt-crds writes KubeVirt's VirtualMachine and VirtualMachineInstance CRDs,
// for the e2e tests' site clusters, from the module at the version build.sh pins.
//
// KubeVirt ships no CRD files: virt-operator builds them at run time. Their OpenAPI schemas
// are generated into pkg/virt-operator/resource/generate/components/validations_generated.go
// (the map CRDsValidation, keyed by singular name), and crds.go beside it assembles each CRD:
// names, scope, categories, printer columns, subresources, and the versions of
// kubevirt.io/api core/v1 ApiSupportedVersions. This program reads the schemas from that
// file with go/parser, so KubeVirt itself need not compile, and assembles the two CRDs the
// same way. Compiling the real constructors (components.NewVirtualMachineCrd) gave the
// same bytes at v1.7.0; re-check that when the version moves.
//
// Usage: kubevirt-crds <validations_generated.go> <out-dir>
package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"

	"sigs.k8s.io/yaml"
)

type object = map[string]interface{}

// schemas returns the string entries of the CRDsValidation map literal.
func schemas(path string) (map[string]string, error) {
	file, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	var bad error
	ast.Inspect(file, func(n ast.Node) bool {
		kv, ok := n.(*ast.KeyValueExpr)
		if !ok {
			return bad == nil
		}
		key, keyOK := kv.Key.(*ast.BasicLit)
		value, valueOK := kv.Value.(*ast.BasicLit)
		if !keyOK || !valueOK || key.Kind != token.STRING || value.Kind != token.STRING {
			return true
		}
		k, err1 := strconv.Unquote(key.Value)
		v, err2 := strconv.Unquote(value.Value)
		if err1 != nil || err2 != nil {
			bad = fmt.Errorf("unquoting the schema of %s", key.Value)
			return false
		}
		out[k] = v
		return false
	})
	return out, bad
}

// crdSpec is what crds.go sets per kind.
type crdSpec struct {
	singular, plural, kind string
	shortNames             []string
	columns                []object
	subresources           object
}

func column(name, typ, path string) object {
	return object{"name": name, "type": typ, "jsonPath": path}
}

var (
	age   = column("Age", "date", ".metadata.creationTimestamp")
	ready = column("Ready", "string", ".status.conditions[?(@.type=='Ready')].status")
)

func virtualMachine() crdSpec {
	status := column("Status", "string", ".status.printableStatus")
	status["description"] = "Human Readable Status"
	return crdSpec{
		singular: "virtualmachine", plural: "virtualmachines", kind: "VirtualMachine",
		shortNames:   []string{"vm", "vms"},
		columns:      []object{age, status, ready},
		subresources: object{"status": object{}},
	}
}

func virtualMachineInstance() crdSpec {
	migratable := column("Live-Migratable", "string", ".status.conditions[?(@.type=='LiveMigratable')].status")
	migratable["priority"] = 1
	paused := column("Paused", "string", ".status.conditions[?(@.type=='Paused')].status")
	paused["priority"] = 1
	return crdSpec{
		singular: "virtualmachineinstance", plural: "virtualmachineinstances", kind: "VirtualMachineInstance",
		shortNames: []string{"vmi", "vmis"},
		columns: []object{age, column("Phase", "string", ".status.phase"),
			column("IP", "string", ".status.interfaces[0].ipAddress"),
			column("NodeName", "string", ".status.nodeName"), ready, migratable, paused},
	}
}

func build(spec crdSpec, schema string) (object, error) {
	var validation object // {"openAPIV3Schema": ...}
	if err := yaml.Unmarshal([]byte(schema), &validation); err != nil {
		return nil, fmt.Errorf("the schema of %s: %w", spec.singular, err)
	}
	version := func(name string, storage bool) object {
		v := object{"name": name, "served": true, "storage": storage,
			"additionalPrinterColumns": spec.columns, "schema": validation}
		if spec.subresources != nil {
			v["subresources"] = spec.subresources
		}
		if name == "v1alpha3" {
			v["deprecated"] = true
			v["deprecationWarning"] = "kubevirt.io/v1alpha3 is now deprecated and will be removed in a future release."
		}
		return v
	}
	return object{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   object{"name": spec.plural + ".kubevirt.io", "labels": object{"kubevirt.io": ""}},
		"spec": object{
			"group": "kubevirt.io",
			"scope": "Namespaced",
			"names": object{"plural": spec.plural, "singular": spec.singular, "kind": spec.kind,
				"shortNames": spec.shortNames, "categories": []string{"all"}},
			"versions": []object{version("v1", true), version("v1alpha3", false)},
		},
	}, nil
}

func run(source, out string) error {
	all, err := schemas(source)
	if err != nil {
		return err
	}
	for _, spec := range []crdSpec{virtualMachine(), virtualMachineInstance()} {
		schema, ok := all[spec.singular]
		if !ok {
			return fmt.Errorf("%s has no schema for %s", source, spec.singular)
		}
		crd, err := build(spec, schema)
		if err != nil {
			return err
		}
		text, err := yaml.Marshal(crd)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, "kubevirt.io_"+spec.plural+".yaml"), text, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: kubevirt-crds <validations_generated.go> <out-dir>")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "kubevirt-crds:", err)
		os.Exit(1)
	}
}
