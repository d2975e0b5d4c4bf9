"""A small CLIP-layout vocabulary, learned here (no download): the tokenizer tests and the Stable Diffusion folders
of the equivalence tests share it."""

import json

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

from minisd.text.clip_tokenizer import CLIP_WORDS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CAPTIONS = """\
a photo of a cat sitting on a red chair in the living room
an astronaut riding a horse on the moon, digital art, trending on artstation
a painting of a lighthouse at sunset by vincent van gogh, oil on canvas
portrait of a young woman with freckles, soft light, 85mm, highly detailed
a bowl of ramen with chopsticks, studio photograph, shallow depth of field
a futuristic city skyline at night with flying cars and neon signs
it's a dog's life: they're running, we've won, I'm here, you'll see, he'd go, don't stop
a watercolor illustration of a fox in a snowy forest, children's book
the golden gate bridge in fog, 4k, ultra realistic, cinematic lighting
a cozy cabin in the mountains surrounded by pine trees during winter
an old man reading a newspaper on a park bench, black and white photography
a bouquet of sunflowers in a blue vase on a wooden table, still life
a robot playing chess against a child, concept art, unreal engine
a medieval castle on a cliff above the stormy sea, matte painting
two kittens sleeping in a basket of yarn, macro photography, bokeh
a steaming cup of coffee next to an open notebook and a pencil
an aerial view of a tropical island with turquoise water and white sand
a samurai standing in the rain under cherry blossoms, ukiyo-e style
a vintage car parked in front of a diner, 1950s, kodachrome
a dragon flying over a burning village, fantasy, epic composition
a close-up of a hummingbird drinking nectar from a red flower
a minimalist poster of a mountain range with geometric shapes
a plate of pancakes with blueberries and maple syrup, food photography
a girl with a pearl earring, in the style of johannes vermeer
an underwater scene with coral reefs, tropical fish and a sea turtle
a street market in marrakech with spices, lanterns and carpets
a bicycle leaning against a brick wall covered in ivy
a snowy owl perched on a branch, wildlife photography, sharp focus
a spaceship landing on a red desert planet with two suns
a jazz band playing in a smoky bar, dramatic lighting, film noir
a train crossing a stone bridge in the highlands of scotland
an isometric render of a tiny room with plants and a computer, blender
a pumpkin patch on a foggy morning in october
a portrait of an elderly fisherman with a white beard and a wool hat
a glass of red wine on a balcony overlooking paris at dusk
a hot air balloon festival over cappadocia at sunrise
a koala hugging a eucalyptus tree, cute, national geographic
the northern lights above a frozen lake in norway, long exposure
a pixel art knight fighting a slime monster, 16-bit
a cyberpunk samurai with glowing katana in tokyo rain
a sailboat on calm water reflecting pink clouds at sunset
a library with endless bookshelves and spiral staircases, surreal
a family of elephants walking across the savanna at golden hour
a ceramic teapot with blue floral patterns, product photo, white background
a child flying a kite on a windy beach, impressionist painting
a wolf howling at the full moon, silhouette, dark blue sky
a greenhouse full of orchids and ferns, morning light through glass
a skateboarder doing a kickflip in an empty swimming pool
a lemon tree in a terracotta pot on a sunny windowsill
a steampunk airship with brass gears and copper pipes
""".splitlines()


def bytes_to_unicode() -> list[str]:
    """GPT-2's table: byte b -> a printable character (printable bytes keep their own)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [byte for byte in range(256) if byte not in kept]
    return [chr(byte) for byte in kept] + [chr(256 + index) for index in range(len(moved))]


def learn_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-layout vocabulary learned from CAPTIONS with tokenizers' BpeTrainer on a CLIP-like pipeline."""
    learner = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    learner.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    learner.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=5000, min_frequency=1, show_progress=False, end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    learner.train_from_iterator(CAPTIONS, trainer)
    merges = [tuple(merge) for merge in json.loads(learner.to_str())["model"]["merges"]]
    symbols = bytes_to_unicode()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + [left + right for left, right in merges] + [BOS, EOS]
    assert len(set(tokens)) == len(tokens) and 500 <= len(merges) <= 2000, len(merges)
    return {token: index for index, token in enumerate(tokens)}, merges


def special(content: str, type_field: bool) -> dict:
    """A special token as SD 1.x / 2.x folders write it (normalized: true)."""
    token = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token} if type_field else token


def write_plain_folder(folder, vocab, merges, pad: str = EOS, added_tokens_decoder: dict | None = None):
    """The older form: vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json."""
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    config = {"add_prefix_space": False, "bos_token": special(BOS, True), "do_lower_case": True,
              "eos_token": special(EOS, True), "errors": "replace", "model_max_length": 77, "pad_token": EOS,
              "tokenizer_class": "CLIPTokenizer", "unk_token": special(EOS, True)}
    if added_tokens_decoder is not None:  # how transformers v4 saved it (e.g. SDXL's second tokenizer)
        config.update(added_tokens_decoder=added_tokens_decoder, bos_token=BOS, eos_token=EOS, unk_token=EOS,
                      pad_token=pad)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": special(BOS, False), "eos_token": special(EOS, False), "pad_token": pad,
         "unk_token": special(EOS, False)}), encoding="utf-8")
    return folder


