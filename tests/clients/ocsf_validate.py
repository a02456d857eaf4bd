"""Validates OCSF records (JSON, one per line on stdin) against the OCSF JSON
Schema of their class, for the OCSF version given as the first argument.

The schemas come from the `ocsf-json-schema` package (PyPI), which ships
the OCSF project's compiled schema for each release and builds JSON Schema
(draft 2020-12) from it. Prints each invalid record's problems as JSON
lines, then a summary line; exits 1 when any record is invalid.
"""

import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


def main():
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=sys.argv[1]))
    validators = {}
    records = invalid = 0
    classes = set()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        record = json.loads(line)
        records += 1
        uid = record.get("class_uid")
        classes.add(uid)
        if uid not in validators:
            name = schema.lookup_class_name_from_uid(uid)
            validators[uid] = Draft202012Validator(schema.get_class_schema(name))
        errors = sorted(validators[uid].iter_errors(record), key=str)
        for e in errors[:5]:
            print(json.dumps({"uid": record.get("metadata", {}).get("uid"), "path": list(e.path), "error": e.message}))
        invalid += bool(errors)
    print(json.dumps({"records": records, "invalid": invalid, "classes": sorted(classes)}))
    sys.exit(1 if invalid else 0)


main()
