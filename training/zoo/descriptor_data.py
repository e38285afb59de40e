"""Synthetic card-statement descriptors for models/merchant-descriptor (seeded).

A descriptor is what an issuer prints on a statement line: an optional bank
prefix ("POS PURCHASE", "CHECKCARD 0412"), an optional payment-processor prefix
("SQ *", "TST* ", "PAYPAL *"), the merchant name — often abbreviated or cut at
the 22-character name field — store numbers, phone numbers or URLs, and a city
and state. Merchants come from two pools per category:

* chains ("SHELL OIL", "WALGREENS", "AMZN Mktp US"), and
* independents: a name word ("BLUE", "MARIO S") + a category noun ("PIZZA",
  "PHARMACY", "GAS"), as in "SQ *BLUE BOTTLE COFFEE".

Held-out merchants: about 30% of each category's chains and 30% of the name
words are reserved for the test split, so test descriptors name merchants the
model never saw (an unseen chain can only be recognised from its surroundings,
an unseen independent from its category noun).
"""

from __future__ import annotations

import random

LABELS = ["restaurants", "grocery", "fuel", "travel", "rideshare", "streaming", "online_retail",
          "pharmacy", "utilities", "cash_atm"]

# Chains: (name, style). style picks the template family.
CHAINS = {
    "restaurants": ["MCDONALD'S", "CHIPOTLE", "STARBUCKS", "SUBWAY", "TACO BELL", "BURGER KING", "WENDYS",
                    "CHICK-FIL-A", "PANERA BREAD", "DOMINOS", "PIZZA HUT", "DUNKIN", "OLIVE GARDEN",
                    "SHAKE SHACK", "FIVE GUYS", "IHOP", "DENNYS", "PANDA EXPRESS", "SWEETGREEN", "IN N OUT BURGER",
                    "UBER *EATS", "DD *DOORDASH", "GRUBHUB*", "BLUE BOTTLE COFFEE", "PEETS COFFEE", "KFC",
                    "JACK IN THE BOX", "APPLEBEES", "CHILIS", "WAFFLE HOUSE"],
    "grocery": ["SAFEWAY", "KROGER", "WHOLEFDS", "TRADER JOE S", "ALDI", "PUBLIX", "WEGMANS", "H-E-B",
                "FOOD LION", "GIANT EAGLE", "SPROUTS FARMERS MKT", "HY-VEE", "MEIJER", "SHOPRITE", "STOP & SHOP",
                "WINCO FOODS", "RALPHS", "VONS", "ALBERTSONS", "HARRIS TEETER", "FRED MEYER", "LIDL",
                "INSTACART", "FRESH THYME", "PIGGLY WIGGLY", "SAVE A LOT", "FOOD 4 LESS", "MARKET BASKET"],
    "fuel": ["SHELL OIL", "CHEVRON", "EXXONMOBIL", "BP#", "SUNOCO", "VALERO", "MARATHON PETRO", "SPEEDWAY",
             "CIRCLE K", "76 -", "WAWA", "QT", "ARCO", "CITGO", "PHILLIPS 66", "CASEYS GEN STORE", "7-ELEVEN",
             "RACETRAC", "SHEETZ", "MURPHY USA", "KWIK TRIP", "LOVES TRAVEL STOP", "PILOT", "GULF OIL",
             "CONOCO", "MOBIL", "TEXACO", "HOLIDAY STNS"],
    "travel": ["DELTA AIR", "UNITED", "AMERICAN AIR", "SOUTHWES", "JETBLUE", "ALASKA AIR", "SPIRIT AIRL",
               "MARRIOTT", "HILTON HOTELS", "HYATT REGENCY", "HOLIDAY INN EXPRESS", "AIRBNB *", "EXPEDIA",
               "BOOKING.COM", "HERTZ RENT-A-CAR", "ENTERPRISE RENT-A-CAR", "AVIS", "HOTELS.COM", "VRBO",
               "AMTRAK", "GREYHOUND", "FRONTIER AIRLINES", "BEST WESTERN", "MOTEL 6", "SHERATON",
               "PRICELINE", "KAYAK", "LA QUINTA INN"],
    "rideshare": ["UBER *TRIP", "LYFT *RIDE", "CURB TAXI", "YELLOW CAB", "VIA RIDESHARE", "BOLT.EU/O",
                  "FREENOW", "GETT", "LIME*RIDE", "BIRD APP", "REVEL TRANSIT", "ALTO RIDES", "ARRO TAXI",
                  "UBER *PENDING", "LYFT *SCHEDULED RIDE", "FLYWHEEL TAXI", "CHECKER CAB", "BLACKLANE"],
    "streaming": ["NETFLIX.COM", "SPOTIFY USA", "HULU", "DISNEY PLUS", "HBO MAX", "GOOGLE *YOUTUBE PREMIUM",
                  "PARAMOUNT+", "PEACOCK", "PRIME VIDEO", "AUDIBLE", "SIRIUSXM", "TIDAL", "DEEZER",
                  "CRUNCHYROLL", "TWITCH", "APPLE.COM/BILL", "SLING TV", "FUBOTV", "PANDORA", "STARZ",
                  "SHOWTIME", "DISCOVERY PLUS", "YOUTUBE TV", "PHILO"],
    "online_retail": ["AMZN Mktp US*", "AMAZON.COM*", "EBAY O*", "ETSY.COM", "WALMART.COM", "TARGET.COM",
                      "SHEIN", "TEMU.COM", "WISH.COM", "BESTBUY.COM", "PAYPAL *ALIEXPRESS", "ZAPPOS",
                      "WAYFAIR", "CHEWY.COM", "NEWEGG", "SHOPIFY*", "OVERSTOCK", "ASOS", "MACYS.COM",
                      "NORDSTROM.COM", "KOHLS.COM", "HOMEDEPOT.COM", "IKEA ONLINE", "ZALANDO", "ALIBABA"],
    "pharmacy": ["CVS/PHARMACY", "WALGREENS", "RITE AID", "DUANE READE", "BOOTS", "GOODRX", "EXPRESS SCRIPTS",
                 "CAPSULE PHARMACY", "HEALTH MART", "KINNEY DRUGS", "OPTUM RX", "AMAZON PHARMACY",
                 "COSTCO PHARMACY", "KROGER PHARMACY", "BARTELL DRUGS", "MEDICINE SHOPPE", "GENOA HEALTHCARE",
                 "ALTO PHARMACY", "HEB PHARMACY", "SAV-ON DRUGS"],
    "utilities": ["PG&E", "CON ED OF NY", "DUKE ENERGY", "COMCAST CABLE COMM", "XFINITY", "VERIZON WRLS",
                  "AT&T *BILL PAYMENT", "T-MOBILE", "SPECTRUM", "NATIONAL GRID", "SOCALGAS", "DOMINION ENERGY",
                  "GEORGIA POWER", "XCEL ENERGY", "COX COMM", "CENTURYLINK", "EVERSOURCE", "PSEG",
                  "AMEREN", "ENTERGY", "FRONTIER COMM", "OPTIMUM", "AMERICAN WATER", "SDGE"],
    "cash_atm": ["ATM WITHDRAWAL", "ATM CASH WITHDRAWAL", "CASH WDL", "NON-CHASE ATM WITHDRAW",
                 "WITHDRAWAL ATM", "ATM W/D", "ALLPOINT ATM", "CARDTRONICS ATM", "CASH ADVANCE",
                 "WELLS FARGO ATM", "BANK OF AMERICA ATM", "CHASE ATM", "CITIBANK ATM", "PNC ATM",
                 "US BANK ATM", "MONEYPASS ATM", "ATM FEE", "CASH BACK"],
}

# Category nouns for independents (shared by train and test: the generalisable cue).
NOUNS = {
    "restaurants": ["PIZZA", "PIZZERIA", "GRILL", "CAFE", "COFFEE", "TAQUERIA", "DINER", "BISTRO", "SUSHI",
                    "KITCHEN", "BBQ", "BAKERY", "RESTAURANT", "BURGERS", "NOODLE HOUSE", "THAI CUISINE",
                    "TACOS", "BAR & GRILL", "DELI", "RAMEN", "STEAKHOUSE", "BREWING CO"],
    "grocery": ["MARKET", "FOODS", "GROCERY", "SUPERMARKET", "FARMERS MKT", "FOOD MART", "FRESH MARKET",
                "PRODUCE", "GROCERS", "FOOD CO-OP", "BUTCHER", "ORGANIC MARKET"],
    "fuel": ["GAS", "FUEL", "PETROLEUM", "GAS STATION", "OIL CO", "FUEL STOP", "GAS & GO", "TRAVEL CENTER",
             "PETRO", "SERVICE STATION"],
    "travel": ["INN", "HOTEL", "SUITES", "AIRLINES", "MOTEL", "RESORT", "LODGE", "AIRWAYS", "CAR RENTAL",
               "TRAVEL", "HOSTEL", "BED & BREAKFAST", "CRUISES"],
    "rideshare": ["TAXI", "CAB", "LIMO", "CAR SERVICE", "RIDES", "SHUTTLE", "CHAUFFEUR", "RIDESHARE",
                  "TRANSPORTATION"],
    "streaming": ["TV", "STREAMING", "MUSIC", "VIDEO", "PLUS", "FLIX", "STREAM", "MEDIA SUBSCRIPTION", "RADIO",
                  "ANIME", "PODCASTS"],
    "online_retail": ["ONLINE", ".COM", "SHOP", "STORE ONLINE", "OUTLET ONLINE", "MARKETPLACE", "WEBSHOP",
                      "DIRECT", "BOUTIQUE ONLINE", "SUPPLY CO"],
    "pharmacy": ["PHARMACY", "DRUGS", "APOTHECARY", "CHEMIST", "RX", "DRUG STORE", "COMPOUNDING PHARMACY",
                 "HEALTH PHARMACY", "MEDICAL SUPPLY"],
    "utilities": ["ENERGY", "ELECTRIC", "WATER", "POWER", "UTILITIES", "TELECOM", "WIRELESS", "GAS & ELECTRIC",
                  "BROADBAND", "WATER DEPT", "LIGHT & POWER", "PUBLIC SERVICE", "SEWER"],
    "cash_atm": ["BANK ATM", "CREDIT UNION ATM", "ATM", "SAVINGS BANK ATM", "FCU ATM", "CASH WITHDRAWAL"],
}

NAME_WORDS = [
    "BLUE", "GOLDEN", "MARIO S", "SUNSET", "LUCKY", "GREEN", "RED ROOF", "SILVER", "ROYAL", "EAGLE", "PINE",
    "OCEAN", "MAPLE", "HARBOR", "LIBERTY", "SUMMIT", "RIVERSIDE", "CAPITAL", "STAR", "METRO", "PACIFIC",
    "ATLANTIC", "NORTHSIDE", "SOUTHERN", "WESTSIDE", "EASTGATE", "CORNER", "VILLAGE", "CITY", "DOWNTOWN",
    "UPTOWN", "MIDTOWN", "HAPPY", "FAMILY", "TONY S", "ROSA S", "LEE S", "KIM S", "GARCIA", "NGUYEN",
    "PATEL", "JOE S", "ANNA S", "BIG SKY", "LONE STAR", "EMPIRE", "PHOENIX", "ORCHARD", "MEADOW", "CEDAR",
    "OAK", "BRIGHT", "ACE", "PREMIER", "QUICK", "EXPRESS", "PRIME", "ALPHA", "OMEGA", "NOVA", "ZEN", "LOTUS",
    "JADE", "SAKURA", "TAJ", "BOMBAY", "SAIGON", "HAVANA", "NAPOLI", "ROMA", "PARIS", "LONDON", "DUBLIN",
    "ATHENS", "CAIRO", "ALAMO", "MISSION", "CANYON", "DESERT", "MOUNTAIN", "VALLEY", "LAKESIDE", "BAYVIEW",
    "HILLTOP", "PARKSIDE", "STATION", "DEPOT", "HOMETOWN", "NEIGHBOR", "TRUE", "BEST", "FIRST", "ONE STOP",
    "ALL STAR", "WILLOW", "BIRCH", "ASPEN", "FALCON", "HAWK", "BEAR", "WOLF", "FOX", "TIGER", "LION",
    "DRAGON", "PANDA", "KOI", "CORAL", "AMBER", "IVORY", "RUBY", "SAPPHIRE", "CRYSTAL", "DIAMOND", "ELM",
    "SPRUCE", "HOLLY", "IRIS", "DAISY", "ROSE", "TULIP", "POPPY", "SAGE",
]

CITIES = [("SAN FRANCISCO", "CA"), ("LOS ANGELES", "CA"), ("SAN DIEGO", "CA"), ("OAKLAND", "CA"),
          ("HOUSTON", "TX"), ("AUSTIN", "TX"), ("DALLAS", "TX"), ("SAN ANTONIO", "TX"), ("NEW YORK", "NY"),
          ("BROOKLYN", "NY"), ("BUFFALO", "NY"), ("CHICAGO", "IL"), ("NAPERVILLE", "IL"), ("SEATTLE", "WA"),
          ("TACOMA", "WA"), ("PORTLAND", "OR"), ("DENVER", "CO"), ("BOULDER", "CO"), ("PHOENIX", "AZ"),
          ("TUCSON", "AZ"), ("MIAMI", "FL"), ("ORLANDO", "FL"), ("TAMPA", "FL"), ("ATLANTA", "GA"),
          ("SAVANNAH", "GA"), ("BOSTON", "MA"), ("CAMBRIDGE", "MA"), ("PHILADELPHIA", "PA"), ("PITTSBURGH", "PA"),
          ("DETROIT", "MI"), ("ANN ARBOR", "MI"), ("MINNEAPOLIS", "MN"), ("ST PAUL", "MN"), ("NASHVILLE", "TN"),
          ("MEMPHIS", "TN"), ("CHARLOTTE", "NC"), ("RALEIGH", "NC"), ("COLUMBUS", "OH"), ("CLEVELAND", "OH"),
          ("LAS VEGAS", "NV"), ("RENO", "NV"), ("SALT LAKE CTY", "UT"), ("KANSAS CITY", "MO"), ("ST LOUIS", "MO"),
          ("NEW ORLEANS", "LA"), ("BALTIMORE", "MD"), ("RICHMOND", "VA"), ("ARLINGTON", "VA"),
          ("WASHINGTON", "DC"), ("HONOLULU", "HI")]

BANK_PREFIXES = ["POS PURCHASE ", "DEBIT CARD PURCHASE ", "CHECKCARD {mmdd} ", "PURCHASE AUTHORIZED ON {mm}/{dd} ",
                 "POS DEBIT ", "RECURRING PAYMENT ", "VISA DDA PUR ", "PRE-AUTH ", "CARD {last4} "]
# Processor prefixes and how likely each category uses them.
PROCESSORS = {"SQ *": 0.30, "TST* ": 0.15, "SP * ": 0.12, "PAYPAL *": 0.15, "PY *": 0.06, "IC* ": 0.05,
              "CKE*": 0.05, "CLV*": 0.06, "WPY*": 0.03, "SUMUP *": 0.03}
PROCESSOR_AFFINITY = {"restaurants": 0.35, "grocery": 0.10, "fuel": 0.03, "travel": 0.06, "rideshare": 0.04,
                      "streaming": 0.05, "online_retail": 0.25, "pharmacy": 0.06, "utilities": 0.08,
                      "cash_atm": 0.0}
ABBREV = {"MARKET": ["MKT", "MKTS"], "PHARMACY": ["PHARM", "PHCY", "PHAR"], "RESTAURANT": ["REST", "RSTRNT"],
          "SUPERMARKET": ["SPRMKT", "SUPERMKT"], "STATION": ["STN", "STA"], "ELECTRIC": ["ELEC", "ELECT"],
          "AIRLINES": ["AIRL", "AIR"], "WITHDRAWAL": ["WDL", "WD", "WITHDRWL"], "SERVICE": ["SVC", "SVCS"],
          "TRANSPORTATION": ["TRANSP", "TRNSPRT"], "GROCERY": ["GROC", "GRCRY"], "PETROLEUM": ["PETRO", "PETRL"],
          "KITCHEN": ["KTCHN", "KITCH"], "COFFEE": ["COFFE", "CAFE"], "STREAMING": ["STRM", "STREAM"],
          "UTILITIES": ["UTIL", "UTILS"], "WIRELESS": ["WRLS", "WIRELES"], "INTERNATIONAL": ["INTL"],
          "CENTER": ["CTR", "CNTR"], "HOTEL": ["HTL"], "SUBSCRIPTION": ["SUBSCR", "SUB"], "DRUGS": ["DRUG"],
          "FOODS": ["FOOD", "FDS"], "ONLINE": ["ONLN", "ONLIN"], "TAXI": ["TAXI"], "ENERGY": ["ENRGY"]}


def _digits(rng: random.Random, lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    return "".join(rng.choice("0123456789") for _ in range(n))


def _alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(n))


def _phone(rng: random.Random) -> str:
    a, b, c = _digits(rng, 3, 3), _digits(rng, 3, 3), _digits(rng, 4, 4)
    return rng.choice([f"{a}-{b}-{c}", f"{a}{b}{c}", f"{a}-{b}{c}", f"{a}.{b}.{c}"])


def _abbreviate(name: str, rng: random.Random, p: float) -> str:
    words = name.split(" ")
    out = []
    for w in words:
        if w in ABBREV and rng.random() < p:
            w = rng.choice(ABBREV[w])
        elif len(w) > 6 and rng.random() < p / 4:  # drop vowels after the first letter: "BAKERY" -> "BKRY"
            w = w[0] + "".join(ch for ch in w[1:] if ch not in "AEIOU")
        out.append(w)
    return " ".join(out)


def _detail(cat: str, rng: random.Random) -> str:
    """Category-typical tail: store numbers, phone numbers, URLs, trip codes."""
    r = rng.random()
    if cat in ("streaming", "utilities", "online_retail") and r < 0.35:
        return rng.choice([_phone(rng), "HELP." + rng.choice(["COM", "NET"]), "WWW", "BILL", "ONLINE PMT",
                           "WEB PMT", "AUTOPAY", "MEMBERSHIP", "RECURRING"])
    if cat == "online_retail" and r < 0.7:
        return _alnum(rng, rng.randint(6, 10))
    if cat == "travel" and r < 0.4:
        return _digits(rng, 10, 13)
    if cat == "rideshare" and r < 0.5:
        return rng.choice(["HELP.UBER.COM", "LYFT.COM", _phone(rng),
                           rng.choice(["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]) + " "
                           + str(rng.randint(1, 12)) + rng.choice(["AM", "PM"])])
    if cat == "cash_atm" and r < 0.6:
        return rng.choice([f"{rng.randint(1, 9999)} {rng.choice(['MAIN', 'BROADWAY', 'MARKET', 'OAK', '1ST', '5TH'])} "
                           f"{rng.choice(['ST', 'AVE', 'BLVD', 'RD'])}", "#" + _digits(rng, 4, 6), _alnum(rng, 8)])
    if r < 0.75:
        return rng.choice(["#", "", "", "# ", "F", "T"]) + _digits(rng, 2, 6)
    return ""


def descriptor(cat: str, name: str, rng: random.Random) -> str:
    parts = []
    if rng.random() < 0.12:
        parts.append(rng.choice(BANK_PREFIXES).format(
            mmdd=f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}", mm=f"{rng.randint(1, 12):02d}",
            dd=f"{rng.randint(1, 28):02d}", last4=_digits(rng, 4, 4)))
    body = _abbreviate(name, rng, 0.35)
    if rng.random() < PROCESSOR_AFFINITY[cat]:
        procs = list(PROCESSORS)
        body = rng.choices(procs, weights=[PROCESSORS[p] for p in procs])[0] + body
    if rng.random() < 0.3:                        # the 22-character merchant-name field of the clearing record
        body = body[:rng.randint(14, 22)].rstrip()
    parts.append(body)
    d = _detail(cat, rng)
    if d:
        parts.append(d)
    if cat not in ("streaming", "online_retail") or rng.random() < 0.3:
        city, st = rng.choice(CITIES)
        if rng.random() < 0.85:
            parts.append(city[:rng.choice([13, 13, 10, 20])].rstrip())
        parts.append(st)
    elif rng.random() < 0.6:
        parts.append(rng.choice(["CA", "WA", "NY", "DE", "NV", "LU", "IE", "GB"]))
    s = " ".join(parts)
    if rng.random() < 0.15:
        s = s.replace(" ", "  ", rng.randint(1, 2))
    r = rng.random()
    if r < 0.08:
        s = s.lower()
    elif r < 0.14:
        s = s.title()
    return s


def split_pools(seed: int, holdout: float = 0.3) -> dict:
    """Per split, the merchant names each category may use: disjoint chains and name words."""
    rng = random.Random(seed * 7919 + 1)
    words = NAME_WORDS[:]
    rng.shuffle(words)
    k = int(len(words) * holdout)
    word_split = {"test": words[:k], "train": words[k:]}
    pools = {"train": {}, "test": {}}
    for cat in LABELS:
        chains = CHAINS[cat][:]
        rng.shuffle(chains)
        kc = max(1, int(round(len(chains) * holdout)))
        for split, ch in (("test", chains[:kc]), ("train", chains[kc:])):
            pools[split][cat] = {"chains": ch, "words": word_split[split]}
    return pools


def merchant_name(cat: str, pool: dict, rng: random.Random) -> str:
    if rng.random() < 0.55:
        return rng.choice(pool["chains"])
    noun = rng.choice(NOUNS[cat])
    w = rng.choice(pool["words"])
    if noun.startswith("."):
        return w.replace(" ", "") + noun
    return f"{w} {noun}" if rng.random() < 0.85 else f"{noun} {w}"


def generate(seed: int, n_train: int, n_test: int) -> tuple[list, list, list, dict]:
    """([(text, label index)] train, test, test_seen, pools), classes balanced.
    `test` merchants never appear in train; `test_seen` is fresh descriptors of the
    training merchants (an in-distribution reference)."""
    pools = split_pools(seed)
    out = {}
    for split, pool, n, salt in (("train", "train", n_train, 11), ("test", "test", n_test, 23),
                                 ("test_seen", "train", n_test, 37)):
        rng = random.Random(seed * 1000003 + salt)
        rows = []
        for i in range(n):
            c = i % len(LABELS)
            cat = LABELS[c]
            rows.append((descriptor(cat, merchant_name(cat, pools[pool][cat], rng), rng), c))
        rng.shuffle(rows)
        out[split] = rows
    return out["train"], out["test"], out["test_seen"], pools
