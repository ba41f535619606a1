"""The word list the generated speech corpus builds its sentences from.

Common, mostly short English words (nouns, verbs, adjectives, function words) chosen so
that the sentences cover most English phonemes. The list is part of the corpus
definition: changing it changes every generated utterance, so the corpus cache key
includes a hash of it.
"""
from __future__ import annotations

_TEXT = """
the a an this that these those my your his her our their some every each no all
one two three four five six seven eight nine ten many few more most other same
i you he she we they it me him us them who what where when why how which
is are was were be been have has had do does did will would can could shall should
may might must go goes went come came take took make made see saw look looked
give gave find found think thought tell told ask asked work worked feel felt try
leave left call called keep kept let begin began seem help show heard play run ran
move moved live lived believe bring brought happen write wrote sit sat stand stood
lose lost pay paid meet met include continue set learn change lead understand watch
follow stop speak spoke read spend grow open walk win offer remember love consider
appear buy wait serve die send expect build stay fall fell cut reach kill remain
suggest raise pass sell require report decide pull push carry drive jump climb swim
sing sang throw catch hold break choose wear sleep dream laugh smile cry shout
time year people way day man woman child world life hand part place case week
company system program question government number night point home water room
mother father sister brother family friend area money story fact month lot right
study book eye job word business issue side kind head house service power hour game
line end member law car city community name president team minute idea kid body
information back parent face level office door health person art war history party
result morning reason research girl guy moment air teacher force education foot
boy age policy music market sense nation plan college interest death experience
effect class control field development role effort rate heart drug show leader light
voice wife police mind price report decision son view relationship town road arm
difference value building action model season society tax director position player
record paper space ground form event matter center couple site project activity star
table need court oil situation cost industry figure street image phone data picture
practice piece land product doctor wall patient worker news test movie north south
east west love summer winter spring autumn garden river mountain ocean island forest
bread cheese apple orange banana coffee milk sugar salt pepper butter chicken fish
dog cat horse bird mouse sheep cow pig rabbit tiger zebra whale snake frog bee
good new first last long great little own old big high different small large next
early young important few public bad able free sure clear full special easy strong
certain real black white red blue green yellow brown purple pink gray dark bright
warm cold hot cool quiet loud soft hard heavy thin thick deep wide narrow happy sad
angry tired hungry funny strange simple careful quick slow fast rich poor short tall
clean dirty wet dry fresh empty sweet sour bitter smooth rough
up down out in over under again never always often usually sometimes today tomorrow
yesterday now then here there very really also just only even still already almost
together away around before after during between through across behind beside near
because although while until unless if and but or so yet not
zoo jazz measure vision treasure judge bridge chair cheap shoe shop thank thing
those breathe bathe wing song young yes yellow yard wheel whisper zero voyage
"""

WORDS: tuple[str, ...] = tuple(dict.fromkeys(_TEXT.split()))
"""The distinct words, in the order written above (duplicates dropped)."""
