"""Checks an AsyncAPI document the bus generated against the official AsyncAPI 3.0.0 JSON
Schema (the npm package `@asyncapi/specs`), and example payloads against its message schemas.

    asyncapi_validate.py <document.json> [<examples.json>] [--cache <dir>]

<examples.json> maps a key of `components.messages` to a list of bodies as the bus wrote them
(JSON values); each must be accepted by that message's `payload` schema.

The schema file is taken from $ASYNCAPI_SPEC when set, else from <dir> (default: a temporary
directory) where `npm pack @asyncapi/specs` is run once.

Exit status: 0 valid, 1 invalid (errors on stderr), 77 a prerequisite is missing (the reason
on stderr): jsonschema, npm, or the package.
"""

import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile

SKIP = 77


def skip(reason):
    print(f"skip: {reason}", file=sys.stderr)
    sys.exit(SKIP)


def spec_path(cache):
    explicit = os.environ.get("ASYNCAPI_SPEC")
    if explicit:
        if not os.path.isfile(explicit):
            skip(f"ASYNCAPI_SPEC={explicit} is not a file")
        return explicit
    root = os.path.join(cache, "asyncapi-specs")
    found = find_spec(root)
    if found:
        return found
    os.makedirs(root, exist_ok=True)
    try:
        packed = subprocess.run(
            ["npm", "pack", "--silent", "@asyncapi/specs", "--pack-destination", root],
            capture_output=True,
            text=True,
            timeout=180,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        skip(f"npm pack @asyncapi/specs: {e}")
    if packed.returncode != 0:
        skip(f"npm pack @asyncapi/specs failed: {packed.stderr.strip()[-500:]}")
    for tgz in glob.glob(os.path.join(root, "asyncapi-specs-*.tgz")):
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith("3.0.0.json")]
            tar.extractall(root, members=members)
    found = find_spec(root)
    if not found:
        skip("@asyncapi/specs has no 3.0.0.json")
    return found


def find_spec(root):
    for rel in ("package/schemas/3.0.0.json", "package/json-schemas/3.0.0.json"):
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            return path
    return None


def main(argv):
    cache = None
    if "--cache" in argv:
        i = argv.index("--cache")
        cache = argv[i + 1]
        del argv[i : i + 2]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import jsonschema
    except ImportError:
        skip("the Python package jsonschema is not installed")

    with open(argv[0]) as f:
        document = json.load(f)
    examples = {}
    if len(argv) > 1:
        with open(argv[1]) as f:
            examples = json.load(f)

    with open(spec_path(cache or tempfile.mkdtemp())) as f:
        spec = json.load(f)

    errors = []
    validator = jsonschema.validators.validator_for(spec)(spec)
    for error in validator.iter_errors(document):
        path = "/".join(str(p) for p in error.absolute_path)
        errors.append(f"document at /{path}: {error.message[:300]}")

    components = document.get("components", {})
    messages = components.get("messages", {})
    for key, bodies in examples.items():
        if key not in messages:
            errors.append(f"no message {key!r} in components.messages")
            continue
        # The payload's `$ref`s point at `#/components/schemas/...`: resolve them against a
        # root that carries the document's components.
        schema = {"allOf": [messages[key]["payload"]], "components": components}
        checker = jsonschema.Draft7Validator(schema)
        for body in bodies:
            for error in checker.iter_errors(body):
                errors.append(f"{key}: {json.dumps(body)[:200]}: {error.message[:300]}")

    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        return 1
    print(
        f"valid AsyncAPI 3.0.0 document; {sum(len(b) for b in examples.values())} "
        f"example payloads accepted"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
