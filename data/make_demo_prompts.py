"""Write data/demo_prompts.txt: synthetic Lexica-style prompts for the offline default run.

Demo data, made by this script from the keyword lists below (no real user prompts): a subject phrase,
then the medium, style, lighting, detail, artist and platform keywords that a style family habitually
uses, in the order real prompts tend to put them. Seeded, so the file is reproducible:

    python data/make_demo_prompts.py            # 6,000 prompts
"""

import argparse
import random
from pathlib import Path

ADJECTIVES = ["young", "old", "beautiful", "curly haired", "fierce", "mysterious", "cute", "giant", "tiny",
              "ancient", "futuristic", "melancholic", "smiling", "armored", "hooded", "elegant", "ragged",
              "glowing", "ethereal", "cybernetic", "redhead", "blonde", "silver haired", "tattooed", "noble"]
BEINGS = ["woman", "man", "girl", "boy", "knight", "witch", "wizard", "samurai", "astronaut", "robot",
          "cyborg", "elf", "queen", "king", "princess", "warrior", "necromancer", "pirate", "monk", "dragon",
          "fox", "owl", "cat", "wolf", "android", "alien", "goddess", "priestess", "soldier", "ranger"]
ACTIONS = ["standing in the rain", "holding a sword", "reading a book", "riding a horse", "looking at the stars",
           "in a flower field", "on a throne", "in a neon city", "walking through a forest", "casting a spell",
           "drinking tea", "playing the violin", "in a spaceship cockpit", "under a cherry tree", "on a cliff"]
PLACES = ["castle", "city", "forest", "temple", "village", "library", "spaceship interior", "market",
          "lighthouse", "cathedral", "floating island", "waterfall", "desert oasis", "harbor", "ruins"]
PLACE_ADJ = ["abandoned", "overgrown", "cyberpunk", "medieval", "underwater", "steampunk", "snowy",
             "sunlit", "foggy", "alien", "ancient", "fantasy", "post apocalyptic", "cozy", "gothic"]
TIMES = ["at sunset", "at night", "at dawn", "in winter", "during a storm", "in autumn", "at golden hour"]

# A style family: keyword slots in prompt order, each (probability, choices); artists and platforms.
FAMILIES = {
    "fantasy illustration": {
        "slots": [(0.6, ["intricate"]), (0.5, ["elegant"]), (0.8, ["highly detailed"]),
                  (0.7, ["digital painting"]), (0.7, ["artstation"]), (0.7, ["concept art"]),
                  (0.5, ["smooth"]), (0.6, ["sharp focus"]), (0.5, ["illustration"])],
        "artists": ["artgerm", "greg rutkowski", "alphonse mucha", "wlop", "charlie bowater", "ross tran",
                    "magali villeneuve", "krenz cushart", "artem demura", "stanley artgerm lau"],
        "platforms": ["trending on artstation", "cgsociety", "deviantart"],
    },
    "photograph": {
        "slots": [(0.5, ["35mm photo", "portrait photo", "photograph", "polaroid photo"]),
                  (0.5, ["kodachrome", "kodak portra 400", "fujifilm", "cinestill 800t"]),
                  (0.6, ["bokeh", "shallow depth of field", "depth of field"]),
                  (0.5, ["film grain"]), (0.5, ["natural lighting", "soft light", "golden hour lighting"]),
                  (0.5, ["85mm lens", "50mm lens", "canon eos r5", "sony a7r"]), (0.4, ["award winning"])],
        "artists": ["annie leibovitz", "steve mccurry", "gregory crewdson", "alex webb", "peter lindbergh"],
        "platforms": ["500px", "flickr", "national geographic"],
    },
    "3d render": {
        "slots": [(0.7, ["octane render", "unreal engine 5", "blender", "redshift render"]),
                  (0.5, ["8k", "4k", "16k"]), (0.5, ["ray tracing", "global illumination"]),
                  (0.6, ["volumetric lighting", "cinematic lighting", "studio lighting"]),
                  (0.6, ["hyper realistic", "ultra detailed", "hyperdetailed"]), (0.4, ["cinematic"]),
                  (0.3, ["symmetrical", "isometric", "wide angle"])],
        "artists": ["beeple", "simon stalenhag", "zaha hadid", "james gurney", "ash thorp", "maciej kuciara"],
        "platforms": ["trending on artstation", "cgsociety", "behance"],
    },
    "anime": {
        "slots": [(0.6, ["anime", "anime key visual", "manga cover"]), (0.5, ["studio ghibli", "makoto shinkai"]),
                  (0.5, ["cel shading", "vibrant colors", "pastel colors"]), (0.5, ["detailed face", "cute eyes"]),
                  (0.4, ["official art", "key visual"]), (0.4, ["highly detailed"])],
        "artists": ["ilya kuvshinov", "hayao miyazaki", "kentaro miura", "yoshitaka amano", "range murata",
                    "makoto shinkai", "sakimichan"],
        "platforms": ["pixiv", "trending on pixiv", "danbooru"],
    },
    "oil painting": {
        "slots": [(0.7, ["oil painting", "oil on canvas", "watercolor", "gouache"]),
                  (0.5, ["dramatic lighting", "chiaroscuro", "soft lighting"]),
                  (0.5, ["masterpiece", "museum quality", "fine art"]), (0.4, ["impasto", "brush strokes"]),
                  (0.4, ["muted colors", "warm colors", "rich colors"]), (0.3, ["baroque", "romanticism"])],
        "artists": ["john singer sargent", "rembrandt", "j. c. leyendecker", "caspar david friedrich",
                    "john william waterhouse", "claude monet", "vermeer", "albert bierstadt"],
        "platforms": ["trending on artstation", "wikiart"],
    },
}


def subject(rng: random.Random) -> str:
    if rng.random() < 0.6:
        phrase = f"{rng.choice(['a portrait of a', 'a', 'full body portrait of a', 'close up of a'])} " \
                 f"{rng.choice(ADJECTIVES)} {rng.choice(BEINGS)}"
        if rng.random() < 0.6:
            phrase += f" {rng.choice(ACTIONS)}"
        return phrase
    place = f"{rng.choice(PLACE_ADJ)} {rng.choice(PLACES)} {rng.choice(TIMES)}"
    return f"{'an' if place[0] in 'aeiou' else 'a'} {place}" if rng.random() < 0.7 else f"the {place}"


def demo_prompt(rng: random.Random) -> str:
    family = FAMILIES[rng.choice(list(FAMILIES))]
    words = [subject(rng)]
    if rng.random() < 0.4:  # a second subject detail, as real prompts often add one
        words.append(rng.choice(ADJECTIVES + PLACE_ADJ))
    words += [rng.choice(choices) for p, choices in family["slots"] if rng.random() < p]
    artists = rng.sample(family["artists"], rng.randint(1, 3))
    words.append(rng.choice(["art by ", "by ", "in the style of "]) + " and ".join(artists))
    if rng.random() < 0.6:
        words.append(rng.choice(family["platforms"]))
    return ", ".join(dict.fromkeys(words))  # no repeated keyword


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_prompts", type=int, default=6000, help="how many prompts to write")
    parser.add_argument("--seed", type=int, default=42, help="random seed; same seed, same file")
    parser.add_argument("--output", default=str(Path(__file__).with_name("demo_prompts.txt")), help="file to write")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    prompts = dict.fromkeys(demo_prompt(rng) for _ in range(args.num_prompts * 2))  # unique, in order
    Path(args.output).write_text("\n".join(list(prompts)[: args.num_prompts]) + "\n")
    print(f"wrote {min(len(prompts), args.num_prompts)} prompts to {args.output}")


if __name__ == "__main__":
    main()
