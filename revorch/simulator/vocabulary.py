"""Built-in word lists and weights the simulator draws names, titles and free text from.

Everything here is plain ASCII so every generated line is JSON-safe without escaping
surprises. ``INDUSTRY_FIT`` and ``TIER_FIT`` are the hidden ideal-customer profile: tests
and notebooks may read them to check that the generated data carries a learnable signal.
"""

from __future__ import annotations

FIRST_NAMES = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Daniel",
    "Lisa",
    "Matthew",
    "Nancy",
    "Anthony",
    "Betty",
    "Mark",
    "Sandra",
    "Steven",
    "Ashley",
    "Paul",
    "Emily",
    "Andrew",
    "Kimberly",
    "Joshua",
    "Donna",
    "Kevin",
    "Michelle",
    "Brian",
    "Carol",
    "George",
    "Amanda",
    "Timothy",
    "Melissa",
    "Jan",
    "Anna",
    "Lukas",
    "Sofia",
    "Mateo",
    "Lucia",
    "Hugo",
    "Emma",
    "Noah",
    "Mia",
    "Oliver",
    "Freya",
    "Arjun",
    "Priya",
    "Hiroshi",
    "Yuki",
    "Wei",
    "Mei",
    "Omar",
    "Leila",
    "Tomasz",
    "Katarzyna",
    "Pedro",
    "Beatriz",
    "Lars",
    "Ingrid",
    "Pierre",
    "Camille",
    "Giulia",
    "Marco",
    "Aisha",
    "Kwame",
    "Sven",
    "Elif",
]

LAST_NAMES = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Mueller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Dubois",
    "Laurent",
    "Bernard",
    "Rossi",
    "Russo",
    "Ferrari",
    "Esposito",
    "Jansen",
    "DeVries",
    "Bakker",
    "Nowak",
    "Kowalski",
    "Silva",
    "Santos",
    "Costa",
    "Tanaka",
    "Suzuki",
    "Sato",
    "Chen",
    "Wang",
    "Li",
    "Patel",
    "Sharma",
    "Singh",
    "Khan",
    "Ali",
    "Andersson",
    "Johansson",
    "Nielsen",
    "Okafor",
    "Mensah",
    "Yilmaz",
    "Kaya",
    "Murphy",
    "Kelly",
    "OBrien",
    "Novak",
    "Horvat",
    "Ivanova",
]

# (title, seniority): seniority nudges conversion, decision makers convert more.
JOB_TITLES = (
    ("Marketing Coordinator", 0.0),
    ("Marketing Manager", 0.4),
    ("Head of Marketing", 0.8),
    ("VP Marketing", 1.0),
    ("Sales Operations Analyst", 0.1),
    ("RevOps Manager", 0.6),
    ("Head of Revenue Operations", 0.9),
    ("Chief Revenue Officer", 1.2),
    ("Software Engineer", -0.2),
    ("Engineering Manager", 0.3),
    ("CTO", 1.0),
    ("Data Analyst", 0.0),
    ("Head of Data", 0.7),
    ("Operations Manager", 0.3),
    ("CFO", 1.0),
    ("Finance Manager", 0.3),
    ("Customer Success Manager", 0.2),
    ("Founder", 1.1),
    ("Student", -1.0),
    ("Consultant", -0.3),
)
JOB_TITLE_WEIGHTS = (8, 9, 5, 3, 6, 6, 4, 2, 9, 5, 2, 7, 3, 6, 2, 4, 5, 3, 2, 5)

# (industry, hidden fit): how well the industry matches the product.
INDUSTRY_FIT = {
    "software": 1.0,
    "fintech": 0.8,
    "ecommerce": 0.5,
    "professional_services": 0.3,
    "media": 0.1,
    "healthcare": 0.0,
    "manufacturing": -0.3,
    "logistics": -0.2,
    "education": -0.6,
    "retail": -0.4,
    "government": -1.0,
    "nonprofit": -0.9,
}
INDUSTRY_WEIGHTS = (16, 8, 8, 10, 6, 9, 10, 6, 7, 8, 4, 4)

TIERS = ("smb", "mid_market", "enterprise", "strategic")
# Minimum employees for each tier, in TIERS order.
TIER_MIN_EMPLOYEES = (0, 200, 1_000, 5_000)
TIER_FIT = (-0.4, 0.4, 0.5, 0.2)
# Sales cycles get longer with company size.
TIER_CYCLE_FACTOR = (1.0, 1.7, 2.6, 3.6)
PLANS = ("starter", "professional", "enterprise", "enterprise")
# List price per seat and year, by plan tier position.
SEAT_PRICE = (360.0, 600.0, 1_080.0, 1_080.0)

# (country, phone prefix)
COUNTRIES = (
    ("US", "+1"),
    ("GB", "+44"),
    ("DE", "+49"),
    ("FR", "+33"),
    ("NL", "+31"),
    ("CA", "+1"),
    ("AU", "+61"),
    ("SE", "+46"),
    ("ES", "+34"),
    ("IN", "+91"),
    ("BR", "+55"),
    ("JP", "+81"),
)
COUNTRY_WEIGHTS = (38, 10, 9, 6, 4, 6, 5, 3, 4, 6, 5, 4)

COMPANY_WORDS = [
    "North",
    "Blue",
    "Bright",
    "Silver",
    "Iron",
    "Cedar",
    "Maple",
    "Harbor",
    "Summit",
    "Vertex",
    "Quantum",
    "Nimbus",
    "Atlas",
    "Lumen",
    "Apex",
    "Orbit",
    "Pioneer",
    "Granite",
    "Falcon",
    "Willow",
    "Delta",
    "Crescent",
    "Beacon",
    "Horizon",
    "Meridian",
    "Cobalt",
    "Ember",
    "Juniper",
    "Polar",
    "Sterling",
    "Terra",
    "Vector",
    "Zenith",
    "Aurora",
    "Copper",
    "Evergreen",
    "Nova",
    "Pacific",
    "Redwood",
    "Signal",
]
COMPANY_SUFFIXES = [
    "Labs",
    "Systems",
    "Analytics",
    "Group",
    "Software",
    "Logistics",
    "Health",
    "Partners",
    "Works",
    "Networks",
    "Dynamics",
    "Solutions",
    "Retail",
    "Capital",
    "Media",
    "Foods",
    "Energy",
    "Robotics",
    "Cloud",
    "Studio",
]
DOMAIN_ENDINGS = (".com", ".io", ".co", ".net", ".ai", ".de", ".co.uk")

LEAD_SOURCES = (
    "organic_search",
    "paid_ads",
    "webinar",
    "referral",
    "outbound",
    "event",
    "partner",
)
LEAD_SOURCE_WEIGHTS = (25, 20, 12, 8, 20, 8, 7)
# Hidden effect of the lead source on engagement and conversion.
LEAD_SOURCE_EFFECT = (0.0, -0.4, 0.2, 0.8, -0.3, 0.3, 0.5)

ACTIVITY_TYPES = (
    "email_sent",
    "email_opened",
    "email_replied",
    "meeting",
    "call",
    "web_visit",
    "form_fill",
)
# Activity mix of a cold and of a warm contact; each contact mixes the two by engagement.
COLD_ACTIVITY_MIX = (0.42, 0.27, 0.02, 0.01, 0.06, 0.19, 0.03)
WARM_ACTIVITY_MIX = (0.18, 0.20, 0.12, 0.08, 0.08, 0.22, 0.12)
HIGH_INTENT_ACTIVITIES = ("email_replied", "meeting", "form_fill")

WEB_URLS = ("/", "/blog/revenue-forecasting", "/product", "/customers", "/docs", "/pricing")
COLD_URL_WEIGHTS = (30, 35, 15, 10, 8, 2)
WARM_URL_WEIGHTS = (10, 15, 20, 15, 10, 30)
FORM_URLS = ("/demo", "/contact-sales", "/ebook/pipeline-benchmarks", "/webinar/register")

EMAIL_SUBJECTS = (
    "Quick question about your pipeline reporting",
    "Following up on the webinar",
    "Benchmarks for forecasting accuracy",
    "Re: demo next week?",
    "How teams like yours cut reporting time",
    "Your trial workspace is ready",
    "Checking in",
    "Invitation: revenue operations roundtable",
)
MEETING_SUBJECTS = (
    "Discovery call",
    "Product demo",
    "Technical deep dive",
    "Pricing discussion",
    "Security review",
    "Executive alignment",
)
CALL_SUBJECTS = ("Intro call", "Follow-up call", "Left voicemail", "Qualification call")
MEETING_NOTES = (
    "Walked through current reporting stack; spreadsheets everywhere.",
    "Interested in forecasting; needs CRM sync before next quarter.",
    "Asked about SSO and data residency.",
    "Budget approved for this half year, comparing two vendors.",
    "Champion is keen, economic buyer not yet involved.",
    "Concerned about migration effort from the legacy tool.",
)
FORM_SUBJECTS = ("Demo request", "Contact sales", "Ebook download", "Webinar registration")

LOST_REASONS = (
    "no_budget",
    "chose_competitor",
    "no_decision",
    "timing",
    "missing_features",
    "price",
)
LOST_REASON_WEIGHTS = (20, 25, 25, 12, 10, 8)

DEAL_STAGES = (
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
    "closedwon",
    "closedlost",
)

OWNER_ROLES = ("sdr", "ae", "csm", "manager")
OWNER_DOMAIN = "revorch-demo.com"
SALES_TEAMS = ("sales_na", "sales_emea", "sales_apac")

TICKET_CATEGORIES = (
    "billing",
    "bug",
    "how_to",
    "integration",
    "account_access",
    "feature_request",
    "performance",
)
TICKET_CATEGORY_WEIGHTS = (12, 22, 25, 15, 8, 10, 8)
TICKET_PRIORITIES = ("low", "medium", "high", "urgent")
CALM_PRIORITY_WEIGHTS = (35, 40, 20, 5)
UPSET_PRIORITY_WEIGHTS = (10, 30, 35, 25)

# Per category: (subject, calm body, upset body).
TICKET_TEXT = {
    "billing": (
        "Question about our invoice",
        "Hi, could you explain the seat count on our latest invoice? Thanks.",
        "We were charged again for seats we removed last month. This is the third time "
        "and nobody has fixed it. Please refund us today.",
    ),
    "bug": (
        "Dashboard shows wrong totals",
        "The pipeline dashboard total looks off by one deal since yesterday.",
        "Your dashboard is showing completely wrong numbers and our board meeting is "
        "tomorrow. This is unacceptable, we are questioning whether to keep using it.",
    ),
    "how_to": (
        "How do I set up a forecast view?",
        "Is there a guide for building a forecast by region? Thanks in advance.",
        "I have asked twice how to build a forecast by region and still have no answer. "
        "We cannot get value out of the product like this.",
    ),
    "integration": (
        "CRM sync stopped",
        "Our CRM sync has not updated since this morning, can you take a look?",
        "The CRM sync has been broken for days. Our reps are working from stale data "
        "and leadership is asking why we pay for this.",
    ),
    "account_access": (
        "Cannot log in with SSO",
        "One of our users gets an SSO error, the others are fine.",
        "Half of the team is locked out again. This keeps happening and it is blocking "
        "our whole sales floor.",
    ),
    "feature_request": (
        "Feature request: custom fiscal year",
        "It would help us a lot to have a custom fiscal year in reports.",
        "Without a custom fiscal year the reports are useless to finance. We were told "
        "this was on the roadmap months ago.",
    ),
    "performance": (
        "Reports are slow",
        "Some reports take a minute to load this week.",
        "Reports time out constantly. We are evaluating alternatives if this is not "
        "resolved this week.",
    ),
}
