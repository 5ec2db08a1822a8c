// Read a .glb with three.js (GLTFLoader + AnimationMixer, as a web viewer plays it) and print, as JSON,
// every node's world position at each frame time t = i / fps of the first animation, the clip length,
// and the skinned mesh's vertex positions (three's CPU skinning) at a few frames.
// Usage: node read_gltf.mjs FILE FPS FRAMES [SKIN_FRAME ...]
import { readFileSync } from "node:fs";
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

const [file, fpsArg, framesArg, ...skinFrames] = process.argv.slice(2);
const fps = Number(fpsArg);
const frames = Number(framesArg);
const data = readFileSync(file);
const buffer = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);

const gltf = await new Promise((resolve, reject) => new GLTFLoader().parse(buffer, "", resolve, reject));
const nodes = await gltf.parser.getDependencies("node");
const clip = gltf.animations[0];
const mixer = new THREE.AnimationMixer(gltf.scene);
mixer.clipAction(clip).play();
const mesh = [];
gltf.scene.traverse((o) => { if (o.isSkinnedMesh) mesh.push(o); });

const positions = [];
const skinned = {};
const skinnedMinY = [];
const v = new THREE.Vector3();
for (let i = 0; i < frames; i++) {
  mixer.setTime(i / fps);
  gltf.scene.updateMatrixWorld(true);
  positions.push(nodes.map((n) => n.getWorldPosition(v).toArray()));
  let lowest = Infinity;
  for (const m of mesh) {
    for (let k = 0; k < m.geometry.attributes.position.count; k++) {
      m.getVertexPosition(k, v);
      lowest = Math.min(lowest, v.applyMatrix4(m.matrixWorld).y);
    }
  }
  skinnedMinY.push(lowest);
  if (skinFrames.includes(String(i))) {
    skinned[i] = mesh.map((m) => {
      const out = [];
      const count = m.geometry.attributes.position.count;
      for (let k = 0; k < count; k++) {
        m.getVertexPosition(k, v);
        v.applyMatrix4(m.matrixWorld);
        out.push(v.toArray());
      }
      return out;
    });
  }
}
process.stdout.write(JSON.stringify({
  names: nodes.map((n) => gltf.parser.json.nodes[nodes.indexOf(n)].name),
  duration: clip.duration, tracks: clip.tracks.length, positions, skinned, skinned_min_y: skinnedMinY,
}));
