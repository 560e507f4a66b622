"""Realistic names and value ranges that the synthetic generators draw from (charts, tables, documents)."""
from __future__ import annotations

# Category sets; the ordered ones keep their natural order on an axis.
CATEGORIES = {
    "countries": ("Germany", "France", "Japan", "Brazil", "Canada", "India", "Kenya", "Mexico", "Norway", "Spain",
                  "Chile", "Egypt", "Italy", "Poland"),
    "cities": ("Lisbon", "Osaka", "Denver", "Lagos", "Hanoi", "Zurich", "Austin", "Perth", "Quito", "Oslo",
               "Dublin", "Seoul"),
    "departments": ("Sales", "Marketing", "Finance", "Engineering", "Support", "Legal", "Operations",
                    "Human Resources", "Research and Development", "Customer Success"),
    "products": ("Laptops", "Tablets", "Phones", "Monitors", "Printers", "Headsets", "Cameras", "Speakers",
                 "Smart watches", "Routers"),
    "sports": ("Football", "Tennis", "Cycling", "Swimming", "Running", "Basketball", "Golf", "Rowing"),
    "channels": ("Search", "Social media", "Email", "Direct", "Referral", "Display ads", "Podcasts"),
    "energy": ("Coal", "Gas", "Nuclear", "Hydro", "Wind", "Solar", "Biomass", "Oil"),
    "age_groups": ("18-24", "25-34", "35-44", "45-54", "55-64", "65+"),
    "months": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "quarters": ("Q1 2023", "Q2 2023", "Q3 2023", "Q4 2023", "Q1 2024", "Q2 2024", "Q3 2024", "Q4 2024"),
    "years": tuple(str(y) for y in range(2010, 2025)),
}
ORDERED = {"age_groups", "months", "quarters", "years"}
# What each category set is called in a question ("Which country ...").
CATEGORY_NOUN = {"countries": "country", "cities": "city", "departments": "department", "products": "product",
                 "sports": "sport", "channels": "channel", "energy": "source", "age_groups": "age group",
                 "months": "month", "quarters": "quarter", "years": "year"}

# (measure as a title names it, axis name with its unit, low, high, decimals, spans decades so may use a log axis)
MEASURES = (
    ("Revenue", "Revenue (million USD)", 5, 900, 0, False),
    ("Population", "Population (thousands)", 20, 90000, 0, True),
    ("Average temperature", "Temperature (°C)", 2, 35, 1, False),
    ("Share of respondents", "Share (%)", 2, 80, 0, False),
    ("Unemployment rate", "Rate (%)", 1.5, 15, 1, False),
    ("Number of employees", "Employees", 10, 5000, 0, True),
    ("Website visits", "Visits (thousands)", 1, 2000, 0, True),
    ("Average price", "Price (USD)", 1.5, 60, 2, False),
    ("Energy output", "Output (TWh)", 0.5, 120, 1, False),
    ("Satisfaction score", "Score (0-10)", 3, 9.8, 1, False),
    ("Orders", "Orders", 40, 950, 0, False),
)
SERIES = (("2022", "2023", "2024"), ("Men", "Women"), ("Online", "In store"), ("Urban", "Rural"),
          ("Plan", "Actual"), ("Domestic", "Export", "Other"), ("Team A", "Team B", "Team C", "Team D"))

FIRST_NAMES = ("Anna", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kara",
               "Luis", "Maya", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Samuel", "Tara", "Umar", "Vera")
LAST_NAMES = ("Andersen", "Brown", "Costa", "Dubois", "Engel", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
              "Kowalski", "Laurent", "Moreau", "Nakamura", "Okafor", "Petrov", "Rossi", "Schmidt", "Tanaka")
COMPANIES = ("Northwind Traders", "Bluebird Logistics", "Acme Tools Ltd", "Greenfield Farms", "Helix Labs",
             "Orion Software", "Riverside Bakery", "Summit Outdoor Co", "Atlas Printing", "Cobalt Energy",
             "Maple & Finch", "Quartz Analytics")
STREETS = ("Main Street", "Oak Avenue", "Harbour Road", "Station Lane", "Mill Street", "Park Drive",
           "King Street", "Elm Close", "Bridge Road", "Market Square")
CITIES = ("Springfield", "Riverton", "Lakeside", "Fairview", "Bristol", "Hamilton", "Kingston", "Ashford",
          "Greenville", "Milton")
# Item and unit price range in cents (invoices, receipts, tables).
ITEMS = (("Coffee beans 1kg", 1200, 2400), ("Printer paper A4", 450, 900), ("USB-C cable", 600, 1500),
         ("Desk lamp", 1900, 5500), ("Notebook", 250, 800), ("Stapler", 700, 1800), ("Monitor stand", 2500, 7000),
         ("Whiteboard markers", 400, 1100), ("Office chair", 8900, 25000), ("Keyboard", 2200, 9000),
         ("Water bottle", 900, 2500), ("Bagel", 150, 350), ("Orange juice", 250, 600), ("Green tea", 180, 450),
         ("Sandwich", 450, 950), ("Muffin", 200, 450), ("Salad bowl", 700, 1300), ("Espresso", 180, 350))
JOB_TITLES = ("Project Manager", "Data Analyst", "Accountant", "Software Engineer", "Office Manager",
              "Sales Director", "Designer", "Nurse", "Teacher", "Technician")
