"""Paraphrased captions for an action and its parameters, and the HumanML3D-style word/POS tokens of
a caption."""
from __future__ import annotations

SUBJECTS = ("a person", "someone", "a man", "a woman", "the person", "a human", "the man", "the woman")
_COUNT = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
_NUM = {2: "two", 3: "three", 4: "four"}


def _speed_words(action: str, speed: float, rng) -> str:
    slow = (" slowly", " at a slow pace", " leisurely") if action == "walk" else (" slowly", " at a slow pace")
    fast = {"walk": (" quickly", " briskly", " at a brisk pace"), "jog": (" quickly", " at a quick pace"),
            "run": (" very fast", " at full speed", " quickly")}.get(action, (" quickly",))
    if speed < 0.25:
        return str(rng.choice(slow))
    if speed > 0.75:
        return str(rng.choice(fast))
    return ""


def verb_phrases(action: str, p: dict, rng) -> list[str]:
    """Paraphrases of the action as verb phrases ('walks forward slowly'), parameters in words."""
    sp = lambda: _speed_words(action, p["speed"], rng)  # noqa: E731
    lr = "left" if p.get("curve", 0) > 0 else "right"
    curve = ""
    if action in ("walk", "jog", "run") and abs(p.get("curve", 0.0)) > 0:
        curve = str(rng.choice([f" while curving to the {lr}", f" and veers to the {lr}",
                                f" along a curve to the {lr}"]))
    if action == "walk":
        v = [f"walks forward{sp()}", f"walks straight ahead{sp()}", f"strolls forward{sp()}",
             f"takes a walk forward{sp()}", f"is walking ahead{sp()}"]
        return [x + curve for x in v]
    if action == "jog":
        v = [f"jogs forward{sp()}", f"jogs ahead{sp()}", f"is jogging forward{sp()}", "does a light jog forward",
             f"jogs along{sp()}"]
        return [x + curve for x in v]
    if action == "run":
        v = [f"runs forward{sp()}", f"sprints ahead{sp()}", f"is running forward{sp()}", f"dashes forward{sp()}",
             f"runs straight ahead{sp()}"]
        return [x + curve for x in v]
    if action == "walk_backwards":
        return [f"walks backwards{sp()}", f"walks backward{sp()}", f"steps backwards{sp()}",
                "moves backwards step by step", "backs up while facing forward"]
    if action in ("sidestep_left", "sidestep_right"):
        d = action.split("_")[1]
        return [f"side steps to the {d}", f"shuffles sideways to the {d}", f"steps sideways to the {d}",
                f"moves sideways towards the {d}", f"takes side steps to the {d}"]
    if action in ("turn_left", "turn_right"):
        d = action.split("_")[1]
        big = p["turn_deg"] >= 150
        v = [f"turns to the {d}", f"turns {d} in place", f"rotates to the {d}", f"pivots to the {d}"]
        v.append(f"turns around to the {d}" if big else f"makes a quarter turn to the {d}")
        return v
    if action == "jump":
        n = p["jumps"]
        times = "" if n == 1 or rng.uniform() < 0.4 else " " + _COUNT[n]
        if p["jump_forward"] > 0:
            return [f"jumps forward{times}", f"leaps forward{times}", f"does a forward jump{times}",
                    f"hops forward with both feet{times}", f"jumps ahead{times}"]
        return [f"jumps up{times}", f"jumps in place{times}", f"hops up and down{times}",
                f"leaps into the air{times}", f"jumps straight up{times}"]
    if action == "squat":
        n = p["reps"]
        many = n > 1 and rng.uniform() < 0.6
        return [f"does {_NUM[n]} squats" if many else "does a squat",
                "squats down and stands back up", "bends the knees into a deep squat and rises",
                "crouches down and stands up again", "squats down low and gets back up"]
    if action in ("wave_left", "wave_right"):
        d = action.split("_")[1]
        return [f"waves with the {d} hand", f"waves the {d} hand", f"raises the {d} hand and waves",
                f"waves hello with the {d} arm", f"lifts the {d} arm and waves it"]
    if action == "raise_arms":
        how = " in front" if p["front"] else " out to the sides"
        return ["raises both arms", "lifts both arms above the head", "puts both hands up in the air",
                f"raises the arms overhead{how}", "reaches both arms up high"]
    if action == "kick":
        d = p["side"]
        return [f"kicks with the {d} leg", f"kicks forward with the {d} foot", f"does a front kick with the {d} leg",
                f"kicks the {d} leg forward", "does a front kick"]
    if action == "idle":
        return ["stands still", "stands idle", "stands in place", "waits while standing",
                "stands and shifts the weight slightly"]
    if action == "walk_circle":
        d = "left" if p["turn_sign"] > 0 else "right"
        return ["walks in a circle", "walks around in a circle", f"walks in a circle to the {d}",
                f"walks in a circle turning {d}", "circles around on foot"]
    if action == "sit_down":
        return ["sits down", "sits down on a chair", "takes a seat", "lowers into a seated position",
                "sits down slowly"]
    raise ValueError(f"unknown action {action!r}")


def captions_for(action: str, p: dict, rng, n: int) -> list[str]:
    """n distinct captions: shuffled paraphrases, each with its own subject."""
    vps = verb_phrases(action, p, rng)
    order = rng.permutation(len(vps))[:n]
    return [f"{SUBJECTS[int(rng.integers(len(SUBJECTS)))]} {vps[k]}" for k in order]


# HumanML3D token style `lemma/POS`: the words by POS, each `word` or `word:lemma`
_LEXICON_BY_POS = {
    "DET": "a the both",
    "PRON": "someone it",
    "NOUN": ("person man woman human walk jog side turn jump squat kick circle seat curve "
             "times:time step front pace speed place left right hand hands:hand arm arms:arm leg "
             "foot feet:foot knees:knee head air weight position chair sides:side hop"),
    "VERB": ("walks:walk walking:walk strolls:stroll takes:take jogs:jog jogging:jog does:do "
             "runs:run running:run sprints:sprint dashes:dash steps:step moves:move backs:back "
             "shuffles:shuffle turns:turn rotates:rotate pivots:pivot makes:make turning:turn "
             "jumps:jump leaps:leap hops:hop squats:squat bends:bend crouches:crouch "
             "stands:stand standing:stand gets:get rises:rise waves:wave raises:raise lifts:lift "
             "puts:put reaches:reach kicks:kick waits:wait shifts:shift circles:circle sits:sit "
             "lowers:lower seated:seat veers:veer curving:curve facing:face"),
    "AUX": "is:be",
    "ADJ": "quarter idle slow brisk quick full light deep vertical few",
    "CCONJ": "and",
    "ADV": ("then afterwards forward forwards:forward ahead straight backwards backward sideways "
            "along around up down back again still low high overhead slightly slowly quickly "
            "briskly leisurely very fast once twice"),
    "SCONJ": "while",
    "NUM": "two three four",
    "ADP": "by at to towards with in into on out of above",
    "INTJ": "hello",
}
_LEXICON = {w.split(":")[0]: (w.split(":")[-1], pos)       # word -> (lemma, POS)
            for pos, words in _LEXICON_BY_POS.items() for w in words.split()}


def tokens_for(caption: str) -> str:
    """HumanML3D-style `lemma/POS` tokens; every word must be in the lexicon (tests check all templates)."""
    out = []
    for w in caption.lower().split():
        if w not in _LEXICON:
            raise KeyError(f"tokens_for: word {w!r} of {caption!r} is not in the synthetic lexicon")
        lemma, pos = _LEXICON[w]
        out.append(f"{lemma}/{pos}")
    return " ".join(out)
