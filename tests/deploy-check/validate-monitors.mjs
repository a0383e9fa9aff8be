// Validates ServiceMonitor and PodMonitor objects (a JSON array, argv[2])
// against the Prometheus Operator's CRD schemas; exits non-zero on the
// first that does not validate.
import fs from "fs";
import { ServiceMonitor, PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { ServiceMonitor, PodMonitor };
for (const doc of JSON.parse(fs.readFileSync(process.argv[2], "utf8"))) {
  const Kind = kinds[doc.kind];
  if (!Kind) throw new Error(`not a monitor: ${doc.kind}`);
  new Kind(doc).validate();
  console.log(`valid ${doc.kind}/${doc.metadata.name}`);
}
