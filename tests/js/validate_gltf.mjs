// Validate a .gltf/.glb with the Khronos glTF validator; prints its JSON report on stdout.
// Usage: node validate_gltf.mjs FILE
import { readFileSync } from "node:fs";
import validator from "gltf-validator";

const file = process.argv[2];
const report = await validator.validateBytes(new Uint8Array(readFileSync(file)), {
  uri: file,
  maxIssues: 100,
});
process.stdout.write(JSON.stringify(report));
