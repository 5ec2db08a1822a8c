// motionstreamer live: a client of the /v1 protocol (see docs/serve.md). Frames arrive a latent's worth
// at a time, ahead of time; a small jitter buffer feeds a playback clock at the stream's fps, drawn with
// interpolation at the display rate. Everything it played is kept (rotations + pelvis) for "Download BVH".
// The stream's format (fps, frames per latent, joints and their sides) comes from /v1/info.
import * as THREE from "three";

let FPS, FRAMES_PER_LATENT, NJ, MAX_RECORD_FRAMES;   // set by start() from /v1/info
const JITTER_FRAMES = 6;            // frames buffered before playback (re)starts: 200 ms at 30 fps
const CATCH_UP_FRAMES = 24;         // more buffered than this: play 10% fast until back under it
const MAX_BUFFER_FRAMES = 90;       // more than this buffered (tab was hidden, page stalled): skip ahead
const MAX_RECORD_SECONDS = 60 * 20;  // BVH recording cap: 20 minutes

const params = new URLSearchParams(location.search);
const token = params.get("token");
const seedParam = params.get("seed");
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ state
const state = {
  info: null, ws: null, connected: false, streamId: null,
  buffer: [],                 // {index, joints: Float32Array(3 * NJ), prompt}
  playhead: 0, playing: false, idle: true,
  pose: null,                 // Float32Array(3 * NJ) currently drawn
  framesReceived: 0, framesPlayed: 0, latents: 0,
  serverUnderruns: 0, clientUnderruns: 0, skipped: 0,
  prompt: "", queue: [],
  pendingPrompt: null,        // {text, tSend, tRecv}
  latencyRecv: null, latencyScreen: null,
  recRot: [], recRoot: [],    // per played frame: Float32Array(4 * NJ) quaternions, Float32Array(3) pelvis
  recIndex: [],
  receivedTimes: [],
  goal: null,                 // {x, z} the stream was sent (a click on the floor), until reached or cleared
  goalsReached: 0,
};
window.motionstreamer = { state };   // read by tests and curious visitors (scene added below)

function b64ToF32(s) {
  const bin = atob(s);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Float32Array(bytes.buffer);   // little-endian on every browser platform
}

function authHeaders() { return token ? { Authorization: `Bearer ${token}` } : {}; }

// ------------------------------------------------------------------ scene
const canvas = $("view");
const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
renderer.shadowMap.enabled = true;
renderer.shadowMap.type = THREE.PCFShadowMap;
renderer.outputColorSpace = THREE.SRGBColorSpace;
renderer.toneMapping = THREE.ACESFilmicToneMapping;
renderer.toneMappingExposure = 1.05;

const scene = new THREE.Scene();
scene.background = new THREE.Color(0x0e1320);
scene.fog = new THREE.Fog(0x0e1320, 9, 30);
const camera = new THREE.PerspectiveCamera(40, 1, 0.05, 200);

scene.add(new THREE.HemisphereLight(0xbfd4ff, 0x1a1f2b, 1.1));
const sun = new THREE.DirectionalLight(0xffffff, 2.2);
sun.position.set(3, 7, 4);
sun.castShadow = true;
sun.shadow.mapSize.set(2048, 2048);
Object.assign(sun.shadow.camera, { left: -3, right: 3, top: 3, bottom: -3, near: 0.5, far: 20 });
sun.shadow.bias = -0.0005;
sun.shadow.normalBias = 0.02;
scene.add(sun, sun.target);
const rim = new THREE.DirectionalLight(0x7fb8ff, 0.9);
rim.position.set(-4, 3, -5);
scene.add(rim);

// floor: a grid drawn into a repeating texture (1 m squares, 25 cm minor lines), so it is lit, takes
// the character's shadow and needs no long line primitives (software GL drops lines that cross the camera)
function gridTexture() {
  const n = 512, c = document.createElement("canvas");
  c.width = c.height = n;
  const g = c.getContext("2d");
  g.fillStyle = "#151c2b"; g.fillRect(0, 0, n, n);
  g.strokeStyle = "#222c42"; g.lineWidth = 2;
  for (let i = 1; i < 4; i++) { g.beginPath(); g.moveTo(i * n / 4, 0); g.lineTo(i * n / 4, n); g.moveTo(0, i * n / 4); g.lineTo(n, i * n / 4); g.stroke(); }
  g.strokeStyle = "#3c4d72"; g.lineWidth = 5;
  g.strokeRect(0, 0, n, n);
  const t = new THREE.CanvasTexture(c);
  t.wrapS = t.wrapT = THREE.RepeatWrapping;
  t.repeat.set(120, 120);
  t.anisotropy = renderer.capabilities.getMaxAnisotropy();
  t.colorSpace = THREE.SRGBColorSpace;
  return t;
}
const floor = new THREE.Mesh(new THREE.PlaneGeometry(120, 120),
  new THREE.MeshStandardMaterial({ map: gridTexture(), roughness: 0.92, metalness: 0.0 }));
floor.rotation.x = -Math.PI / 2;
floor.receiveShadow = true;
scene.add(floor);
window.motionstreamer.scene = scene;

// path of the pelvis on the floor
const TRAIL = 600;
const trailGeom = new THREE.BufferGeometry();
trailGeom.setAttribute("position", new THREE.BufferAttribute(new Float32Array(TRAIL * 3), 3));
trailGeom.setDrawRange(0, 0);
const trail = new THREE.Line(trailGeom, new THREE.LineBasicMaterial({ color: 0x5ec8ff, transparent: true, opacity: 0.55 }));
trail.position.y = 0.003;
scene.add(trail);
let trailCount = 0;

// goal marker: a ring and a post where the floor was clicked (hidden without a goal)
const goalMarker = new THREE.Group();
const matGoal = new THREE.MeshStandardMaterial({ color: 0xffd166, emissive: 0x4a3a10, roughness: 0.5 });
const goalRing = new THREE.Mesh(new THREE.RingGeometry(0.22, 0.3, 48), matGoal);
goalRing.rotation.x = -Math.PI / 2;
goalRing.position.y = 0.006;
const goalPost = new THREE.Mesh(new THREE.CylinderGeometry(0.025, 0.025, 0.6, 12), matGoal);
goalPost.position.y = 0.3;
goalMarker.add(goalRing, goalPost);
goalMarker.visible = false;
scene.add(goalMarker);

// ------------------------------------------------------------------ the character
// SMPL body joints: 0 pelvis, 1/2 hips, 3/6/9 spine, 4/5 knees, 7/8 ankles, 10/11 feet, 12 neck,
// 13/14 collars, 15 head, 16/17 shoulders, 18/19 elbows, 20/21 wrists; the sides come from /v1/info.
let LEFT = new Set(), RIGHT = new Set();
const boneRadius = (j) => ({ 1: 0.075, 2: 0.075, 4: 0.062, 5: 0.062, 7: 0.05, 8: 0.05, 10: 0.038, 11: 0.038,
  3: 0.085, 6: 0.09, 9: 0.095, 12: 0.05, 13: 0.05, 14: 0.05, 15: 0.048, 16: 0.055, 17: 0.055,
  18: 0.045, 19: 0.045, 20: 0.038, 21: 0.038 })[j];
const matCenter = new THREE.MeshStandardMaterial({ color: 0xdfe6f2, roughness: 0.45, metalness: 0.05 });
const matLeft = new THREE.MeshStandardMaterial({ color: 0x63b4ff, roughness: 0.45, metalness: 0.05 });
const matRight = new THREE.MeshStandardMaterial({ color: 0xff8a65, roughness: 0.45, metalness: 0.05 });
const matJoint = new THREE.MeshStandardMaterial({ color: 0x2b3448, roughness: 0.6, metalness: 0.1 });
const matFor = (j) => (LEFT.has(j) ? matLeft : RIGHT.has(j) ? matRight : matCenter);

const character = new THREE.Group();
scene.add(character);
let bones = [], jointBalls = [], head = null, torso = null, parents = null;
const SPINE_CHILDREN = new Set([3, 6, 9, 12]);   // drawn as one torso instead of beads
const UP = new THREE.Vector3(0, 1, 0);

function buildCharacter(skeleton) {
  parents = skeleton.parents;
  LEFT = new Set(skeleton.left_joints);
  RIGHT = new Set(skeleton.right_joints);
  const rest = skeleton.rest_offsets;
  for (let j = 1; j < NJ; j++) {
    if (SPINE_CHILDREN.has(j)) continue;
    const len = Math.hypot(...rest[j]);
    const r = boneRadius(j);
    const g = new THREE.CapsuleGeometry(r, Math.max(len - 2 * r * 0.6, 0.01), 6, 16);
    const m = new THREE.Mesh(g, matFor(j));
    m.castShadow = true;
    m.userData = { child: j, rest: len };
    character.add(m);
    bones.push(m);
  }
  const ball = new THREE.SphereGeometry(1, 20, 14);
  for (let j = 0; j < NJ; j++) {
    const s = new THREE.Mesh(ball, j === 0 ? matCenter : matJoint);
    s.visible = ![3, 6, 9, 12].includes(j);      // inside the torso
    const r = j === 0 ? 0.085 : Math.max(0.028, (boneRadius(j) || 0.05) * 0.78);
    s.scale.setScalar(r);
    s.castShadow = true;
    character.add(s);
    jointBalls.push(s);
  }
  const torsoLen = [3, 6, 9, 12].reduce((a, j) => a + Math.hypot(...rest[j]), 0);
  torso = new THREE.Mesh(new THREE.CapsuleGeometry(0.115, torsoLen - 0.13, 8, 24), matCenter);
  torso.castShadow = true;
  torso.userData = { rest: torsoLen };
  character.add(torso);
  head = new THREE.Mesh(new THREE.SphereGeometry(0.105, 32, 24), matCenter);
  head.scale.set(0.92, 1.08, 1.0);
  head.castShadow = true;
  character.add(head);
  const nose = new THREE.Mesh(new THREE.SphereGeometry(0.03, 12, 10), matCenter);   // shows the facing
  nose.position.set(0, -0.005, 0.095);
  head.add(nose);
}

const tmpA = new THREE.Vector3(), tmpB = new THREE.Vector3(), tmpD = new THREE.Vector3();
function applyPose(p) {
  for (let j = 0; j < NJ; j++) jointBalls[j].position.set(p[3 * j], p[3 * j + 1], p[3 * j + 2]);
  for (const m of bones) {
    const c = m.userData.child, q = parents[c];
    tmpA.set(p[3 * q], p[3 * q + 1], p[3 * q + 2]);
    tmpB.set(p[3 * c], p[3 * c + 1], p[3 * c + 2]);
    tmpD.subVectors(tmpB, tmpA);
    const len = tmpD.length();
    m.position.addVectors(tmpA, tmpB).multiplyScalar(0.5);
    if (len > 1e-6) m.quaternion.setFromUnitVectors(UP, tmpD.divideScalar(len));
    m.scale.set(1, len / m.userData.rest, 1);
  }
  // torso: pelvis -> neck, wide across the hips/shoulders, shallow front to back
  tmpA.set(p[0], p[1], p[2]);
  tmpB.set(p[36], p[37], p[38]);
  const ty = tmpD.subVectors(tmpB, tmpA);
  const tlen = ty.length();
  ty.divideScalar(tlen);
  const tx = new THREE.Vector3(p[3] - p[6] + p[48] - p[51], p[4] - p[7] + p[49] - p[52], p[5] - p[8] + p[50] - p[53]);
  tx.addScaledVector(ty, -tx.dot(ty)).normalize();      // hips + shoulders line, orthogonal to the spine
  const tz = new THREE.Vector3().crossVectors(tx, ty);
  torso.quaternion.setFromRotationMatrix(new THREE.Matrix4().makeBasis(tx, ty, tz));
  torso.position.addVectors(tmpA, tmpB).multiplyScalar(0.5).addScaledVector(ty, -0.02);
  torso.scale.set(1.3, tlen / torso.userData.rest, 0.78);
  // head: above the head joint along neck -> head, facing where the body faces
  tmpA.set(p[36], p[37], p[38]);              // neck (12)
  tmpB.set(p[45], p[46], p[47]);              // head (15)
  tmpD.subVectors(tmpB, tmpA).normalize();
  head.position.copy(tmpB).addScaledVector(tmpD, 0.075);
  const lx = p[3 * 16] - p[3 * 17], lz = p[3 * 16 + 2] - p[3 * 17 + 2];   // left minus right shoulder
  head.rotation.set(0, Math.atan2(-lz, lx), 0);   // SMPL faces +z with its left on +x: forward = (-lz, lx)
}

// ------------------------------------------------------------------ camera: smooth follow, drag to orbit
// follow: the view keeps the character in frame (false holds it still: the tests' clicks land where projected)
const cam = { target: new THREE.Vector3(0, 0.9, 0), azimuth: 0.65, elevation: 0.2, distance: 6.0, follow: true };
window.motionstreamer.cam = cam;
let dragging = null;
canvas.addEventListener("pointerdown", (e) => {
  dragging = { x: e.clientX, y: e.clientY, x0: e.clientX, y0: e.clientY };
  canvas.setPointerCapture(e.pointerId);
});
canvas.addEventListener("pointerup", (e) => {
  // a click (no drag) on the floor sends a goal there: the character goes to it in the current prompt's style
  if (dragging && Math.hypot(e.clientX - dragging.x0, e.clientY - dragging.y0) < 5) clickFloor(e.clientX, e.clientY);
  dragging = null;
});
canvas.addEventListener("pointermove", (e) => {
  if (!dragging) return;
  cam.azimuth -= (e.clientX - dragging.x) * 0.006;
  cam.elevation = Math.min(1.2, Math.max(-0.05, cam.elevation + (e.clientY - dragging.y) * 0.004));
  dragging = { x: e.clientX, y: e.clientY };
});
canvas.addEventListener("wheel", (e) => {
  cam.distance = Math.min(14, Math.max(1.8, cam.distance * Math.exp(e.deltaY * 0.001)));
  e.preventDefault();
}, { passive: false });

function updateCamera(dt) {
  if (state.pose && cam.follow) {
    const k = 1 - Math.exp(-dt * 4);
    cam.target.x += (state.pose[0] - cam.target.x) * k;
    cam.target.z += (state.pose[2] - cam.target.z) * k;
    cam.target.y += (Math.max(0.6, state.pose[1]) * 0.95 - cam.target.y) * k;
  }
  const ce = Math.cos(cam.elevation);
  camera.position.set(cam.target.x + cam.distance * ce * Math.sin(cam.azimuth),
    cam.target.y + 0.35 + cam.distance * Math.sin(cam.elevation),
    cam.target.z + cam.distance * ce * Math.cos(cam.azimuth));
  camera.lookAt(cam.target.x, cam.target.y - 0.6, cam.target.z);   // character above the prompt panel
  sun.position.set(cam.target.x + 3, 7, cam.target.z + 4);
  sun.target.position.copy(cam.target);
}

const raycaster = new THREE.Raycaster(), ndc = new THREE.Vector2();
function clickFloor(px, py) {
  ndc.set(px / window.innerWidth * 2 - 1, 1 - py / window.innerHeight * 2);
  raycaster.setFromCamera(ndc, camera);
  const hit = raycaster.intersectObject(floor)[0];
  if (hit) sendGoal(hit.point.x, hit.point.z);
}

function resize() {
  const w = window.innerWidth, h = window.innerHeight;
  renderer.setSize(w, h, false);
  camera.aspect = w / h;
  camera.updateProjectionMatrix();
}
window.addEventListener("resize", resize);
resize();

// ------------------------------------------------------------------ playback (an fps clock, jitter buffer)
function advance(dt) {
  const buf = state.buffer;
  if (!state.playing) {
    if (buf.length >= JITTER_FRAMES || (buf.length > 0 && state.idle)) {
      state.playing = true;
      state.playhead = buf[0].index;
    } else return;
  }
  // drain a buffer grown by a stall (page busy, tab hidden) by playing 10% fast, instead of lagging for good
  const ahead = buf.length ? buf[buf.length - 1].index - state.playhead : 0;
  state.playhead += dt * FPS * (ahead > CATCH_UP_FRAMES ? 1.1 : 1.0);
  if (buf.length && buf[buf.length - 1].index - state.playhead > MAX_BUFFER_FRAMES) {   // stay live
    state.playhead = buf[buf.length - 1].index - JITTER_FRAMES - 8;
    state.skipped += 1;
  }
  while (buf.length >= 2 && buf[1].index <= state.playhead) played(buf.shift());
  if (buf.length >= 2) {
    const a = buf[0], b = buf[1];
    const t = Math.min(1, Math.max(0, (state.playhead - a.index) / (b.index - a.index)));
    const out = state.pose || new Float32Array(NJ * 3);
    for (let i = 0; i < NJ * 3; i++) out[i] = a.joints[i] + (b.joints[i] - a.joints[i]) * t;
    state.pose = out;
  } else if (buf.length === 1) {
    state.pose = buf[0].joints.slice();
    if (state.playhead >= buf[0].index + 1) {       // nothing more to play: stall
      played(buf.shift());
      state.playing = false;
      if (!state.idle) state.clientUnderruns += 1;
    }
  }
}

function played(f) {
  state.framesPlayed += 1;
  if (state.pendingPrompt && state.pendingPrompt.tRecv && f.prompt === state.pendingPrompt.text) {
    state.latencyScreen = performance.now() - state.pendingPrompt.tSend;
    state.pendingPrompt = null;
  }
  if (f.rot && state.recRot.length < MAX_RECORD_FRAMES) {
    state.recRot.push(f.rot);
    state.recRoot.push(f.joints.slice(0, 3));
    state.recIndex.push(f.index);
  }
  if (f.prompt !== state.prompt) { state.prompt = f.prompt; $("now").textContent = f.prompt; }
  const pos = trailGeom.attributes.position;
  if (trailCount < TRAIL) trailCount += 1; else pos.array.copyWithin(0, 3);
  pos.array.set([f.joints[0], 0, f.joints[2]], (trailCount - 1) * 3);
  pos.needsUpdate = true;
  trailGeom.setDrawRange(0, trailCount);
}

// ------------------------------------------------------------------ protocol
function connect() {
  const q = new URLSearchParams({ rotations: "1" });
  if (token) q.set("token", token);
  if (seedParam) q.set("seed", seedParam);
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream?${q}`);
  state.ws = ws;
  ws.onopen = () => { setStatus("connected"); };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  ws.onclose = (ev) => {
    state.connected = false;
    $("liveDot").className = "live off";
    setStatus(`disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""})`, true);
    addEvent("error", `closed ${ev.code}`, ev.reason || "");
    if (state.ws === ws && [1006, 1011, 1012, 1013].includes(ev.code)) setTimeout(() => { if (state.ws === ws) connect(); }, 2000);
  };
}

function onMessage(m) {
  const now = performance.now();
  if (m.type === "hello") {
    state.connected = true; state.streamId = m.stream;
    $("liveDot").className = "live on";
    setStatus(`stream ${m.stream} · look-ahead ${m.lookahead} latents · server ${m.server}`);
    if (!state.prompt && !$("prompt").value) sendPrompt(state.info?.example_prompts?.[0] || "a person walks forward");
  } else if (m.type === "frames") {
    const J = b64ToF32(m.joints), R = m.rotations ? b64ToF32(m.rotations) : null;
    const nj = 3 * NJ, nr = 4 * NJ;   // per frame: positions, quaternions
    for (let k = 0; k < FRAMES_PER_LATENT; k++) {
      state.buffer.push({ index: m.frame + k, prompt: m.prompt, joints: J.subarray(k * nj, k * nj + nj),
        rot: R ? R.subarray(k * nr, k * nr + nr) : null });
    }
    state.idle = false;
    state.framesReceived += FRAMES_PER_LATENT; state.latents += 1; state.lastLatent = m.latent;
    state.serverUnderruns = m.underruns;
    state.receivedTimes.push(now);
    if (state.pendingPrompt && !state.pendingPrompt.tRecv && m.prompt === state.pendingPrompt.text) {
      state.pendingPrompt.tRecv = now;
      state.latencyRecv = now - state.pendingPrompt.tSend;
    }
    for (const e of m.events) addEvent(e.kind, `latent ${e.latent}`, e.prompt);
    if (m.queue) setQueue(m.queue);
    onGoalEvents(m.events);
  } else if (m.type === "events") {
    for (const e of m.events) addEvent(e.kind, `latent ${e.latent}`, e.prompt);
    onGoalEvents(m.events);
    if (m.events.some((e) => e.kind === "finished")) state.idle = true;
  } else if (m.type === "goal_ack") {
    if (m.goal) addEvent("goal", "set", `x ${m.goal.x.toFixed(2)} m, z ${m.goal.z.toFixed(2)} m`);
    else { state.goal = null; goalMarker.visible = false; }
  } else if (m.type === "ack") {
    setQueue(m.queue);
  } else if (m.type === "pong") {
    // keep-alive answer
  } else if (m.type === "error") {
    addEvent("error", m.code, m.message);
  }
}

function sendPrompt(text) {
  text = text.trim().split(/\s+/).join(" ");
  if (!text || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  const msg = { type: "prompt", text };
  if ($("afterCurrent").checked) msg.after_current = true;
  state.ws.send(JSON.stringify(msg));
  state.pendingPrompt = { text, tSend: performance.now(), tRecv: null };
}

function sendGoal(x, z) {
  if (!state.info?.goals) { setStatus("this server takes no goals (goal steering is off and its model was not trained with goals)", true); return; }
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  state.ws.send(JSON.stringify({ type: "goal", x, z }));
  state.goal = { x, z };
  goalMarker.position.set(x, 0, z);
  matGoal.color.set(0xffd166);
  goalMarker.visible = true;
}
window.motionstreamer.sendGoal = sendGoal;

function onGoalEvents(events) {
  if (!events.some((e) => e.kind === "goal_reached")) return;
  state.goalsReached += 1;
  state.goal = null;
  matGoal.color.set(0x5be49b);                       // reached: green, then gone
  setTimeout(() => { if (!state.goal) goalMarker.visible = false; }, 1500);
}

function setQueue(q) {
  state.queue = q;
  const ol = $("queue");
  ol.replaceChildren(...(q.length ? q.map((t) => Object.assign(document.createElement("li"), { textContent: t }))
    : [Object.assign(document.createElement("li"), { textContent: "empty", className: "empty" })]));
}

function addEvent(kind, where, text) {
  const ul = $("events"), top = ul.firstElementChild;
  // "continue" restarts a prompt at each action end: repeats fold into one line with a count
  if (top && top.dataset.kind === kind && top.dataset.text === text) {
    const n = Number(top.dataset.count) + 1;
    top.dataset.count = n;
    top.querySelector("time").textContent = new Date().toLocaleTimeString([], { hour12: false });
    top.lastChild.textContent = ` ${where} · ${text} (×${n})`;
    return;
  }
  const li = document.createElement("li");
  Object.assign(li.dataset, { kind, text, count: 1 });
  li.className = kind;
  const t = document.createElement("time");
  t.textContent = new Date().toLocaleTimeString([], { hour12: false });
  const b = document.createElement("b");
  b.textContent = kind.replace("_", " ");
  li.append(t, b, document.createTextNode(` ${where} · ${text}`));
  ul.prepend(li);
  while (ul.children.length > 60) ul.lastChild.remove();
}

function setStatus(text, bad = false) { const s = $("status"); s.textContent = text; s.className = bad ? "bad" : ""; }

// ------------------------------------------------------------------ BVH (same layout as motionstreamer.io.bvh)
function bvhText() {
  const sk = state.info.skeleton, order = sk.bvh_joint_order, off0 = sk.rest_offsets[0];
  const T = state.recRot.length;
  const lines = [sk.bvh_hierarchy + `MOTION\nFrames: ${T}\nFrame Time: ${(1 / FPS).toFixed(6)}\n`];
  const deg = 180 / Math.PI;
  const euler = new Float64Array(24 * 3);
  for (let f = 0; f < T; f++) {
    const q = state.recRot[f], root = state.recRoot[f];
    euler.fill(0);
    for (let j = 0; j < NJ; j++) {   // R = Rz Ry Rx from (w, x, y, z), as rotation.matrix_to_euler_zyx
      const w = q[4 * j], x = q[4 * j + 1], y = q[4 * j + 2], z = q[4 * j + 3];
      euler[3 * j] = Math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)) * deg;
      euler[3 * j + 1] = Math.asin(Math.min(1, Math.max(-1, 2 * (w * y - z * x)))) * deg;
      euler[3 * j + 2] = Math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y)) * deg;
    }
    const vals = [root[0] + off0[0], root[1] + off0[1], root[2] + off0[2]];
    for (const j of order) vals.push(euler[3 * j], euler[3 * j + 1], euler[3 * j + 2]);
    lines.push(vals.map((v) => v.toFixed(6)).join(" ") + " \n");
  }
  return lines.join("");
}
window.motionstreamer.bvhText = bvhText;

$("bvh").addEventListener("click", () => {
  if (!state.info || !state.recRot.length) { setStatus("nothing played yet", true); return; }
  const blob = new Blob([bvhText()], { type: "text/plain" });
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: "motionstreamer_stream.bvh" });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
});

$("restart").addEventListener("click", () => {
  const old = state.ws; state.ws = null;
  if (old) old.close(1000);
  Object.assign(state, { buffer: [], playing: false, idle: true, prompt: "", recRot: [], recRoot: [], recIndex: [],
    serverUnderruns: 0, clientUnderruns: 0, goal: null });
  goalMarker.visible = false;
  trailCount = 0; trailGeom.setDrawRange(0, 0);
  $("events").replaceChildren(); setQueue([]);
  connect();
});

$("promptForm").addEventListener("submit", (e) => {
  e.preventDefault();
  sendPrompt($("prompt").value);
  $("prompt").value = "";
});

// ------------------------------------------------------------------ overlay + main loop
let fpsEma = 60, lastT = performance.now(), lastOverlay = 0;
function overlay(now) {
  const rt = state.receivedTimes;
  while (rt.length && now - rt[0] > 2000) rt.shift();
  $("sFps").textContent = `${fpsEma.toFixed(0)} fps`;
  $("sStream").textContent = `${(rt.length * FRAMES_PER_LATENT / 2).toFixed(0)} fps`;
  const bufFrames = state.buffer.length ? state.buffer[state.buffer.length - 1].index + 1 - state.playhead : 0;
  $("sBuffer").textContent = FPS ? `${Math.max(0, bufFrames * 1000 / FPS).toFixed(0)} ms` : "–";
  $("sLatency").textContent = state.latencyRecv == null ? "–" : `${state.latencyRecv.toFixed(0)} ms`;
  $("sScreen").textContent = state.latencyScreen == null ? "–" : `${state.latencyScreen.toFixed(0)} ms`;
  $("sUnder").textContent = `${state.serverUnderruns} / ${state.clientUnderruns}`;
  $("sFrame").textContent = state.framesPlayed ? `${Math.floor(state.playhead)}` : "–";
}

window.motionstreamer.projectPoint = (x, y, z) => {   // world -> screen pixels (tests click the floor)
  const v = new THREE.Vector3(x, y, z).project(camera);
  return [(v.x + 1) / 2 * window.innerWidth, (1 - v.y) / 2 * window.innerHeight];
};

window.motionstreamer.projectJoints = () => {
  if (!state.pose) return null;
  const out = [], v = new THREE.Vector3();
  for (let j = 0; j < NJ; j++) {
    v.set(state.pose[3 * j], state.pose[3 * j + 1], state.pose[3 * j + 2]).project(camera);
    out.push([(v.x + 1) / 2 * window.innerWidth, (1 - v.y) / 2 * window.innerHeight]);
  }
  return out;
};

function frame(now) {
  const dt = Math.max(0, (now - lastT) / 1000);   // wall clock: playback stays in real time at any render rate
  lastT = now;
  fpsEma = fpsEma * 0.95 + (dt > 0 ? 1 / dt : 60) * 0.05;
  advance(dt);
  if (state.pose && bones.length) { character.visible = true; applyPose(state.pose); } else character.visible = false;
  updateCamera(dt);
  renderer.render(scene, camera);
  if (now - lastOverlay > 200) { overlay(now); lastOverlay = now; }
  requestAnimationFrame(frame);
}

async function start() {
  try {
    const r = await fetch("/v1/info", { headers: authHeaders() });
    if (!r.ok) throw new Error(`${r.status} ${(await r.json()).error || ""}`);
    state.info = await r.json();
  } catch (e) {
    setStatus(`cannot read /v1/info: ${e.message}`, true);
    return;
  }
  const info = state.info;
  FPS = info.fps;
  FRAMES_PER_LATENT = info.frames_per_latent;
  NJ = info.skeleton.joint_names.length;
  MAX_RECORD_FRAMES = FPS * MAX_RECORD_SECONDS;
  $("model").textContent = `${info.checkpoint === "embedded" ? "embedded default model" : info.checkpoint} · ` +
    `${info.sampling_steps} sampling steps · ${info.device}`;
  buildCharacter(info.skeleton);
  if (!info.goals) $("hint").textContent = "Drag to orbit, wheel to zoom (this model takes no goals).";
  const ex = $("examples");
  for (const p of info.example_prompts.slice(0, 17)) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = p.replace(/^a person /, "");
    b.title = p;
    b.addEventListener("click", () => sendPrompt(p));
    ex.append(b);
  }
  connect();
  $("prompt").focus();
}

// the server closes streams idle for limits.idle_timeout_s; a visible page is being watched: keep it open
setInterval(() => {
  if (document.visibilityState === "visible" && state.ws && state.ws.readyState === WebSocket.OPEN)
    state.ws.send('{"type": "ping"}');
}, 60_000);

requestAnimationFrame(frame);
start();
