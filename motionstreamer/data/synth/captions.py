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
        curve = str(rng.choice([f" while curving to the {lr}", f" and veers to the {lr}", f" along a curve to the {lr}"]))
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


# word -> (lemma, POS), HumanML3D token style `lemma/POS`
_LEXICON = {
    "a": ("a", "DET"), "the": ("the", "DET"), "someone": ("someone", "PRON"), "person": ("person", "NOUN"),
    "man": ("man", "NOUN"), "woman": ("woman", "NOUN"), "human": ("human", "NOUN"),
    "walks": ("walk", "VERB"), "walking": ("walk", "VERB"), "strolls": ("stroll", "VERB"), "takes": ("take", "VERB"),
    "walk": ("walk", "NOUN"), "jogs": ("jog", "VERB"), "jogging": ("jog", "VERB"), "jog": ("jog", "NOUN"),
    "does": ("do", "VERB"), "runs": ("run", "VERB"), "running": ("run", "VERB"), "sprints": ("sprint", "VERB"),
    "dashes": ("dash", "VERB"), "is": ("be", "AUX"), "steps": ("step", "VERB"), "moves": ("move", "VERB"),
    "backs": ("back", "VERB"), "shuffles": ("shuffle", "VERB"), "side": ("side", "NOUN"),
    "turns": ("turn", "VERB"), "rotates": ("rotate", "VERB"), "pivots": ("pivot", "VERB"), "makes": ("make", "VERB"),
    "quarter": ("quarter", "ADJ"), "turn": ("turn", "NOUN"), "turning": ("turn", "VERB"),
    "jumps": ("jump", "VERB"), "leaps": ("leap", "VERB"), "hops": ("hop", "VERB"), "jump": ("jump", "NOUN"),
    "squats": ("squat", "VERB"), "squat": ("squat", "NOUN"), "bends": ("bend", "VERB"), "crouches": ("crouch", "VERB"),
    "stands": ("stand", "VERB"), "standing": ("stand", "VERB"), "gets": ("get", "VERB"), "rises": ("rise", "VERB"),
    "waves": ("wave", "VERB"), "raises": ("raise", "VERB"), "lifts": ("lift", "VERB"), "puts": ("put", "VERB"),
    "reaches": ("reach", "VERB"), "kicks": ("kick", "VERB"), "kick": ("kick", "NOUN"), "waits": ("wait", "VERB"),
    "shifts": ("shift", "VERB"), "circles": ("circle", "VERB"), "circle": ("circle", "NOUN"), "sits": ("sit", "VERB"),
    "lowers": ("lower", "VERB"), "seat": ("seat", "NOUN"), "seated": ("seat", "VERB"), "veers": ("veer", "VERB"),
    "curving": ("curve", "VERB"), "curve": ("curve", "NOUN"), "facing": ("face", "VERB"), "and": ("and", "CCONJ"),
    "then": ("then", "ADV"), "afterwards": ("afterwards", "ADV"), "while": ("while", "SCONJ"),
    "forward": ("forward", "ADV"), "forwards": ("forward", "ADV"), "ahead": ("ahead", "ADV"),
    "straight": ("straight", "ADV"), "backwards": ("backwards", "ADV"), "backward": ("backward", "ADV"),
    "sideways": ("sideways", "ADV"), "along": ("along", "ADV"), "around": ("around", "ADV"), "up": ("up", "ADV"),
    "down": ("down", "ADV"), "back": ("back", "ADV"), "again": ("again", "ADV"), "still": ("still", "ADV"),
    "idle": ("idle", "ADJ"), "low": ("low", "ADV"), "high": ("high", "ADV"), "overhead": ("overhead", "ADV"),
    "slightly": ("slightly", "ADV"), "slowly": ("slowly", "ADV"), "quickly": ("quickly", "ADV"),
    "briskly": ("briskly", "ADV"), "leisurely": ("leisurely", "ADV"), "very": ("very", "ADV"), "fast": ("fast", "ADV"),
    "once": ("once", "ADV"), "twice": ("twice", "ADV"), "times": ("time", "NOUN"), "two": ("two", "NUM"),
    "three": ("three", "NUM"), "four": ("four", "NUM"), "step": ("step", "NOUN"), "by": ("by", "ADP"),
    "at": ("at", "ADP"), "to": ("to", "ADP"), "towards": ("towards", "ADP"), "with": ("with", "ADP"),
    "in": ("in", "ADP"), "into": ("into", "ADP"), "on": ("on", "ADP"), "out": ("out", "ADP"), "of": ("of", "ADP"),
    "above": ("above", "ADP"), "front": ("front", "NOUN"), "slow": ("slow", "ADJ"), "brisk": ("brisk", "ADJ"),
    "quick": ("quick", "ADJ"), "full": ("full", "ADJ"), "light": ("light", "ADJ"), "deep": ("deep", "ADJ"),
    "vertical": ("vertical", "ADJ"), "pace": ("pace", "NOUN"), "speed": ("speed", "NOUN"), "place": ("place", "NOUN"),
    "left": ("left", "NOUN"), "right": ("right", "NOUN"), "hand": ("hand", "NOUN"), "hands": ("hand", "NOUN"),
    "arm": ("arm", "NOUN"), "arms": ("arm", "NOUN"), "leg": ("leg", "NOUN"), "foot": ("foot", "NOUN"),
    "feet": ("foot", "NOUN"), "knees": ("knee", "NOUN"), "head": ("head", "NOUN"), "air": ("air", "NOUN"),
    "both": ("both", "DET"), "few": ("few", "ADJ"), "it": ("it", "PRON"), "hello": ("hello", "INTJ"),
    "weight": ("weight", "NOUN"), "position": ("position", "NOUN"), "chair": ("chair", "NOUN"),
    "sides": ("side", "NOUN"), "hop": ("hop", "NOUN"),
}


def tokens_for(caption: str) -> str:
    """HumanML3D-style `lemma/POS` tokens; every word must be in the lexicon (tests check all templates)."""
    out = []
    for w in caption.lower().split():
        if w not in _LEXICON:
            raise KeyError(f"tokens_for: word {w!r} of {caption!r} is not in the synthetic lexicon")
        lemma, pos = _LEXICON[w]
        out.append(f"{lemma}/{pos}")
    return " ".join(out)
