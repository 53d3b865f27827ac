"""The synthetic training corpus of the embedded default model, generated from a seed.

Every document is one of a few shapes the demos and notebooks use: simple English sentences,
question/answer pairs, numbered and bulleted lists, JSON records, ChatML chat transcripts, yes/no and
multiple-choice answers, and contact details (dates, emails, phone numbers). Facts (capitals, animal
sounds, colours, sums) come from one fixed table so they never contradict each other; names, numbers,
phrasings and orders are drawn at random so the model learns shapes, not strings.

    docs = generate_documents(10_000, seed=0)  # each ends with EOS
"""

from __future__ import annotations

import json
import random
from typing import Callable

EOS = "<|eos|>"

COUNTRIES = [  # country, capital, language, continent
    ("France", "Paris", "French", "Europe"), ("Germany", "Berlin", "German", "Europe"),
    ("Italy", "Rome", "Italian", "Europe"), ("Spain", "Madrid", "Spanish", "Europe"),
    ("Portugal", "Lisbon", "Portuguese", "Europe"), ("England", "London", "English", "Europe"),
    ("Ireland", "Dublin", "English", "Europe"), ("Austria", "Vienna", "German", "Europe"),
    ("Greece", "Athens", "Greek", "Europe"), ("Poland", "Warsaw", "Polish", "Europe"),
    ("Sweden", "Stockholm", "Swedish", "Europe"), ("Norway", "Oslo", "Norwegian", "Europe"),
    ("Denmark", "Copenhagen", "Danish", "Europe"), ("Finland", "Helsinki", "Finnish", "Europe"),
    ("the Netherlands", "Amsterdam", "Dutch", "Europe"), ("Belgium", "Brussels", "French", "Europe"),
    ("Russia", "Moscow", "Russian", "Europe"), ("Turkey", "Ankara", "Turkish", "Asia"),
    ("Japan", "Tokyo", "Japanese", "Asia"), ("China", "Beijing", "Chinese", "Asia"),
    ("India", "New Delhi", "Hindi", "Asia"), ("Korea", "Seoul", "Korean", "Asia"),
    ("Thailand", "Bangkok", "Thai", "Asia"), ("Vietnam", "Hanoi", "Vietnamese", "Asia"),
    ("Egypt", "Cairo", "Arabic", "Africa"), ("Kenya", "Nairobi", "Swahili", "Africa"),
    ("Nigeria", "Abuja", "English", "Africa"), ("Morocco", "Rabat", "Arabic", "Africa"),
    ("Canada", "Ottawa", "English", "North America"), ("Mexico", "Mexico City", "Spanish", "North America"),
    ("the United States", "Washington", "English", "North America"),
    ("Brazil", "Brasilia", "Portuguese", "South America"), ("Argentina", "Buenos Aires", "Spanish", "South America"),
    ("Peru", "Lima", "Spanish", "South America"), ("Chile", "Santiago", "Spanish", "South America"),
    ("Australia", "Canberra", "English", "Oceania"), ("New Zealand", "Wellington", "English", "Oceania"),
]
ANIMALS = [  # animal, sound, legs, can fly, lives in water
    ("cat", "meow", 4, False, False), ("dog", "woof", 4, False, False), ("cow", "moo", 4, False, False),
    ("sheep", "baa", 4, False, False), ("horse", "neigh", 4, False, False), ("pig", "oink", 4, False, False),
    ("duck", "quack", 2, True, True), ("owl", "hoot", 2, True, False), ("lion", "roar", 4, False, False),
    ("frog", "croak", 4, False, True), ("bee", "buzz", 6, True, False), ("snake", "hiss", 0, False, False),
    ("mouse", "squeak", 4, False, False), ("goat", "bleat", 4, False, False), ("crow", "caw", 2, True, False),
    ("spider", "nothing", 8, False, False), ("fish", "blub", 0, False, True), ("bird", "tweet", 2, True, False),
]
COLORS = {"sky": "blue", "grass": "green", "snow": "white", "banana": "yellow", "tomato": "red",
          "coal": "black", "orange": "orange", "sun": "yellow", "sea": "blue", "milk": "white",
          "leaf": "green", "strawberry": "red", "night sky": "black", "lemon": "yellow", "cloud": "white"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "old": "new", "up": "down",
             "day": "night", "light": "dark", "open": "closed", "early": "late", "tall": "short",
             "full": "empty", "wet": "dry", "loud": "quiet", "rich": "poor", "hard": "soft"}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve"]
FIRST_NAMES = ("Alice Bob Carol David Emma Frank Grace Henry Isla Jack Kate Liam Maria Noah Olivia Peter "
               "Quinn Rosa Sam Tara Umar Vera Will Xena Yusuf Zoe Anna Ben Chloe Daniel Ella Felix Hana "
               "Ivan Julia Leo Mia Nina Omar Paul Ruth Sara Tom Lucy Max Eva Hugo Iris Jon Lena").split()
LAST_NAMES = ("Smith Jones Brown Taylor Wilson Clark Lewis Walker Hall Young King Wright Green Baker Adams "
              "Nelson Hill Moore White Martin Garcia Lopez Khan Silva Rossi Novak Meyer Dubois Sato Kim").split()
JOBS = ("teacher doctor nurse engineer farmer baker painter writer pilot chef driver student lawyer "
        "dentist singer artist builder designer manager scientist").split()
FRUITS = "apples pears bananas oranges grapes cherries lemons plums peaches mangoes melons strawberries".split()
FOODS = "bread milk eggs cheese butter rice pasta tea coffee sugar salt flour honey jam soup beans".split()
THINGS = "book ball cup chair table lamp hat coat key box bag pen clock bike car door window".split()
ADJECTIVES = "small big old new red blue green happy quiet warm cold bright dark little young busy".split()
PLACES = ("in the park", "at home", "by the river", "in the garden", "at school", "in the kitchen",
          "on the hill", "at the market", "in the city", "near the lake", "on the beach", "in the forest")
TIMES = ("in the morning", "at night", "every day", "on Sunday", "after lunch", "in the evening", "today")
DOMAINS = ("example.com", "mail.com", "post.org", "inbox.net", "web.io", "company.com")
MONTHS = ("January February March April May June July August September October November December").split()
SENTIMENT = {
    "positive": ["I loved this movie.", "The food was great.", "What a wonderful day!", "The staff were very kind.",
                 "This book is amazing.", "I am very happy with it.", "The music was beautiful."],
    "negative": ["I hated this movie.", "The food was cold and bad.", "What a terrible day.", "The staff were rude.",
                 "This book is boring.", "I am very unhappy with it.", "The music was too loud and awful."],
}


def singular(word: str) -> str:
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("oes", "ches")):
        return word[:-2]
    return word[:-1] if word.endswith("s") else word


class Gen:
    """One document generator: `rng` is the only source of randomness, so a seed fixes the corpus."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, seq):
        return self.rng.choice(seq)

    def person(self) -> dict:
        first, last = self.pick(FIRST_NAMES), self.pick(LAST_NAMES)
        return {"name": first, "last": last, "age": self.rng.randint(18, 90), "city": self.pick(COUNTRIES)[1],
                "job": self.pick(JOBS), "email": self.email(first, last), "phone": self.phone()}

    def email(self, first: str, last: str) -> str:
        user = self.pick([first.lower(), f"{first.lower()}.{last.lower()}", f"{first[0].lower()}{last.lower()}",
                          f"{first.lower()}{self.rng.randint(1, 99)}"])
        return f"{user}@{self.pick(DOMAINS)}"

    def phone(self) -> str:
        a, b, c = self.rng.randint(200, 999), self.rng.randint(100, 999), self.rng.randint(1000, 9999)
        return self.pick([f"{a}-{b}-{c}", f"({a}) {b}-{c}", f"+1 {a} {b} {c}"])

    def date(self) -> str:
        y, m, d = self.rng.randint(1950, 2030), self.rng.randint(1, 12), self.rng.randint(1, 28)
        return self.pick([f"{y}-{m:02d}-{d:02d}", f"{MONTHS[m - 1]} {d}, {y}", f"{d:02d}/{m:02d}/{y}"])

    # ------------------------------------------------------------------ facts: (question, short answer, sentence)
    def fact(self, kind: int | None = None) -> tuple[str, str, str]:
        kind = self.rng.randrange(10) if kind is None else kind
        country, capital, language, continent = self.pick(COUNTRIES)
        animal, sound, legs, flies, _ = self.pick(ANIMALS)
        if kind < 3:
            return (f"What is the capital of {country}?", f"{capital}.", f"The capital of {country} is {capital}.")
        if kind == 3:
            return (f"Which country is {capital} in?", f"{country[0].upper() + country[1:]}.",
                    f"{capital} is in {country}.")
        if kind == 4:
            return (f"What language do people speak in {country}?", f"{language}.",
                    f"People in {country} speak {language}.")
        if kind == 5:
            return (f"What sound does a {animal} make?", f"{sound.capitalize()}.", f"A {animal} says {sound}.")
        if kind == 6:
            return (f"How many legs does a {animal} have?", f"{NUMBER_WORDS[legs].capitalize()}.",
                    f"A {animal} has {NUMBER_WORDS[legs]} legs.")
        if kind == 7:
            thing, color = self.pick(list(COLORS.items()))
            return (f"What color is the {thing}?", f"{color.capitalize()}.", f"The {thing} is {color}.")
        if kind == 8:
            word, opposite = self.pick(list(OPPOSITES.items()))
            return (f"What is the opposite of {word}?", f"{opposite.capitalize()}.",
                    f"The opposite of {word} is {opposite}.")
        a, b = self.rng.randint(0, 20), self.rng.randint(0, 20)
        if self.rng.random() < 0.5 or a < b:
            return (f"What is {a} plus {b}?", f"{a + b}.", f"{a} plus {b} is {a + b}.")
        return (f"What is {a} minus {b}?", f"{a - b}.", f"{a} minus {b} is {a - b}.")

    def yes_no(self) -> tuple[str, str]:
        kind = self.rng.randrange(5)
        if kind == 0:
            country, capital = self.pick(COUNTRIES)[:2]
            other = country if self.rng.random() < 0.5 else self.pick(COUNTRIES)[0]
            return f"Is {capital} in {other}?", "Yes" if other == country else "No"
        if kind == 1:
            animal, _, _, flies, _ = self.pick(ANIMALS)
            return f"Can a {animal} fly?", "Yes" if flies else "No"
        if kind == 2:
            thing, color = self.pick(list(COLORS.items()))
            asked = color if self.rng.random() < 0.5 else self.pick(sorted(set(COLORS.values())))
            return f"Is the {thing} {asked}?", "Yes" if asked == color else "No"
        if kind == 3:
            a, b = self.rng.randint(0, 50), self.rng.randint(0, 50)
            return f"Is {a} bigger than {b}?", "Yes" if a > b else "No"
        item = self.pick(FRUITS + THINGS)
        name = singular(item)
        return f"Is a{'n' if name[0] in 'aeiou' else ''} {name} a fruit?", "Yes" if item in FRUITS else "No"

    # ------------------------------------------------------------------ document shapes
    def sentences(self) -> str:
        p = self.person()
        subject = self.pick([p["name"], f"The {self.pick(ADJECTIVES)} {self.pick(ANIMALS)[0]}",
                             f"The {self.pick(ANIMALS)[0]}", f"My {self.pick(['friend', 'sister', 'brother', 'mother', 'father'])}"])
        templates = [
            f"{subject} sat {self.pick(PLACES)}.",
            f"{subject} likes to play {self.pick(PLACES)} {self.pick(TIMES)}.",
            f"{subject} found a {self.pick(ADJECTIVES)} {self.pick(THINGS)} {self.pick(PLACES)}.",
            f"{subject} went to {p['city']} {self.pick(TIMES)}.",
            f"{subject} ate {self.rng.randint(2, 9)} {self.pick(FRUITS)} {self.pick(TIMES)}.",
            f"{subject} is very {self.pick(ADJECTIVES)} {self.pick(TIMES)}.",
            f"{p['name']} is a {p['job']} who lives in {p['city']}.",
            f"{p['name']} is {p['age']} years old.",
            self.fact()[2],
            "The cat sat on the mat.",
            f"The sun is bright and the {self.pick(['sky', 'sea'])} is blue.",
        ]
        return " ".join(self.rng.sample(templates, self.rng.randint(1, 4)))

    def question_answer(self) -> str:
        style = self.rng.randrange(4)
        if style == 3:  # reading comprehension: the answer is in the text
            p = self.person()
            field, question = self.pick([("city", "Where does {n} live?"), ("age", "How old is {n}?"),
                                         ("job", "What is {n}'s job?"), ("email", "What is {n}'s email?")])
            text = f"{p['name']} is a {p['job']}. {p['name']} is {p['age']} years old and lives in {p['city']}. " \
                   f"{p['name']}'s email is {p['email']}."
            return f"{text}\nQ: {question.format(n=p['name'])} A: {p[field]}."
        pairs = [self.fact() for _ in range(self.rng.randint(1, 4))]
        if style == 0:
            return "\n".join(f"Q: {q} A: {a}" for q, a, _ in pairs)
        if style == 1:
            return "\n".join(f"Question: {q}\nAnswer: {a}" for q, a, _ in pairs)
        return "\n".join(f"Q: {q}\nA: {s}" for q, _, s in pairs)

    def choices(self) -> str:
        style = self.rng.randrange(4)
        if style == 0:
            pairs = [self.yes_no() for _ in range(self.rng.randint(1, 3))]
            if self.rng.random() < 0.3:  # lower-case answers too, for select(["yes", "no"])
                return "\n".join(f"Answer yes or no. {q} {a.lower()}" for q, a in pairs)
            return "\n".join(f"Q: {q} A: {a}." for q, a in pairs)
        if style == 1:
            text, label = self.review()
            return self.pick([f"Review: {text}\nSentiment: {label}", f"{text} Is this positive or negative? {label.capitalize()}."])
        right = singular(self.pick(FRUITS))
        options = [right] + self.rng.sample(THINGS, 2)
        self.rng.shuffle(options)
        if style == 2:
            return f"Q: Which of these is a fruit: {', '.join(options)}? A: {right}."
        kind = self.rng.randrange(10)
        q, a, _ = self.fact(kind)
        opts = [a]  # a list, not a set: set order changes with PYTHONHASHSEED
        while len(opts) < 3:  # distractors of the same kind (every kind has more than 3 answers)
            other = self.fact(kind)[1]
            if other not in opts:
                opts.append(other)
        self.rng.shuffle(opts)
        letters = "ABC"
        lines = [f"{letters[i]}) {o.rstrip('.')}" for i, o in enumerate(opts)]
        return f"Question: {q}\n" + "\n".join(lines) + f"\nAnswer: {letters[opts.index(a)]}) {a.rstrip('.')}"

    def review(self) -> tuple[str, str]:
        label = self.pick(["positive", "negative"])
        return self.pick(SENTIMENT[label]), label

    def listing(self) -> str:
        n = self.rng.randint(2, 5)
        topic, pool = self.pick([("fruits", FRUITS), ("foods", FOODS), ("animals", [a[0] for a in ANIMALS]),
                                 ("colors", sorted(set(COLORS.values()))), ("cities", [c[1] for c in COUNTRIES]),
                                 ("countries", [c[0] for c in COUNTRIES]), ("things", THINGS)])
        items = self.rng.sample(pool, n)
        head = self.pick([f"{NUMBER_WORDS[n].capitalize()} {topic}:", f"List of {topic}:", "Shopping list:",
                          f"Here are {NUMBER_WORDS[n]} {topic}:", f"My favourite {topic}:"])
        if head == "Shopping list:":
            items = self.rng.sample(FRUITS + FOODS, n)
        style = self.rng.randrange(3)
        if style == 0:
            return head + "\n" + "\n".join(f"{i + 1}. {x}" for i, x in enumerate(items))
        if style == 1:
            return head + "\n" + "\n".join(f"- {x}" for x in items)
        return f"{head} " + ", ".join(items[:-1]) + f" and {items[-1]}."

    def json_record(self) -> str:
        p = self.person()
        record = {"name": p["name"], "age": p["age"], "city": p["city"]}
        for key in self.rng.sample(["job", "email", "phone"], self.rng.randint(0, 2)):
            record[key] = p[key]
        if self.rng.random() < 0.2:
            record["active"] = self.rng.random() < 0.5
        style = self.rng.randrange(5)
        if style == 0:
            animal, sound, legs, _, _ = self.pick(ANIMALS)
            return json.dumps({"animal": animal, "sound": sound, "legs": legs})
        if style == 1:
            country, capital, language, continent = self.pick(COUNTRIES)
            return json.dumps({"country": country, "capital": capital, "language": language, "continent": continent})
        if style == 2:
            facts = f"{p['name']} is {p['age']} years old and lives in {p['city']}."
            return f"{facts}\nJSON: {json.dumps({'name': p['name'], 'age': p['age'], 'city': p['city']})}"
        if style == 3:
            items = [{"item": f, "price": round(self.rng.uniform(0.5, 9.9), 2), "quantity": self.rng.randint(1, 9)}
                     for f in self.rng.sample(FRUITS + FOODS, self.rng.randint(1, 3))]
            return json.dumps(items, indent=self.pick([None, 2]))
        return json.dumps(record, indent=self.pick([None, None, 2]))

    def contact(self) -> str:
        p = self.person()
        full = f"{p['name']} {p['last']}"
        style = self.rng.randrange(4)
        if style == 0:
            return f"Name: {full}\nEmail: {p['email']}\nPhone: {p['phone']}\nBirthday: {self.date()}"
        if style == 1:
            return f"Contact {p['name']} at {p['email']} or call {p['phone']}."
        if style == 2:
            return f"The meeting with {p['name']} is on {self.date()} at {self.rng.randint(8, 17)}:{self.pick(['00', '15', '30', '45'])}."
        field, value = self.pick([("email", p["email"]), ("phone number", p["phone"])])
        return f"Q: What is {full}'s {field}? A: {full}'s {field} is {value}."

    def chat(self) -> str:
        turns = []
        if self.rng.random() < 0.3:
            turns.append(("system", self.pick(["You are a helpful assistant.", "Answer briefly.", "You are a friendly bot."])))
        for _ in range(self.rng.randint(1, 2)):
            turns.extend(self.chat_turn())
        return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)

    def chat_turn(self) -> list[tuple[str, str]]:
        kind = self.rng.randrange(6)
        if kind == 0:
            return [("user", self.pick(["Hello!", "Hi.", "Good morning!", "Hey, how are you?"])),
                    ("assistant", self.pick(["Hello! How can I help you today?", "Hi! I am fine, thank you. How can I help?"]))]
        if kind == 1:
            q, a, s = self.fact()
            return [("user", q), ("assistant", self.pick([s, a]))]
        if kind == 2:
            q, a = self.yes_no()
            return [("user", q), ("assistant", f"{a}.")]
        if kind == 3:
            doc = self.listing()
            head, _, body = doc.partition("\n") if "\n" in doc else ("", "", doc)
            ask = f"Give me a list of {self.pick(['fruits', 'foods', 'animals', 'things'])}." if not head else f"Write a list: {head.rstrip(':').lower()}."
            return [("user", ask), ("assistant", body if body else doc)]
        if kind == 4:
            p = self.person()
            return [("user", f"Write a JSON record for {p['name']}, who is {p['age']} and lives in {p['city']}."),
                    ("assistant", json.dumps({"name": p["name"], "age": p["age"], "city": p["city"]}))]
        return [("user", self.pick(["Thank you!", "Thanks.", "Tell me something nice.", "What do you like?"])),
                ("assistant", self.pick(["You are welcome!", "The sun is bright today and the sky is blue.",
                                         "I like books, music and long walks in the park."]))]


SHAPES: list[tuple[str, float]] = [
    ("sentences", 0.14), ("question_answer", 0.22), ("choices", 0.12), ("listing", 0.12),
    ("json_record", 0.14), ("contact", 0.10), ("chat", 0.16),
]


def generate_documents(num_docs: int, seed: int = 0) -> list[str]:
    """`num_docs` documents, each ending with EOS; the same seed always gives the same list."""
    rng = random.Random(seed)
    gen = Gen(rng)
    makers: list[Callable[[], str]] = [getattr(gen, name) for name, _ in SHAPES]
    weights = [w for _, w in SHAPES]
    return [rng.choices(makers, weights)[0]() + EOS for _ in range(num_docs)]


if __name__ == "__main__":
    for doc in generate_documents(12, seed=0):
        print(doc, end="\n\n")
