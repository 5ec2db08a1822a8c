// Read an .fbx with three.js (FBXLoader + AnimationMixer, as a web viewer plays it) and print, as JSON,
// the world position of every bone at each frame time t = i / fps of the first animation, the bone
// names, the clip length and track count. Positions are in the file's units scaled by the root's scale
// (FBXLoader keeps the file's unit; `unit_scale` is the FBX's UnitScaleFactor, centimetres per unit).
// Usage: node read_fbx.mjs FILE FPS FRAMES
import { readFileSync } from "node:fs";
import * as THREE from "three";
import { FBXLoader } from "three/addons/loaders/FBXLoader.js";

const [file, fpsArg, framesArg] = process.argv.slice(2);
const fps = Number(fpsArg);
const frames = Number(framesArg);
const data = readFileSync(file);
const buffer = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);

const scene = new FBXLoader().parse(buffer, "");
const bones = [];
scene.traverse((o) => { if (o.isBone) bones.push(o); });
const clip = scene.animations[0];
const mixer = new THREE.AnimationMixer(scene);
if (clip) mixer.clipAction(clip).play();
const positions = [];
const v = new THREE.Vector3();
for (let i = 0; i < frames; i++) {
  mixer.setTime(i / fps);
  scene.updateMatrixWorld(true);
  positions.push(bones.map((b) => b.getWorldPosition(v).toArray()));
}
process.stdout.write(JSON.stringify({
  names: bones.map((b) => b.name), duration: clip ? clip.duration : 0, tracks: clip ? clip.tracks.length : 0,
  positions,
}));
