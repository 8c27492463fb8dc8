from django.contrib import admin
from django.urls import path

import pubsubpull
from billing import views

urlpatterns = [
    path("admin/", admin.site.urls),
    # The callback URL of billing's subscription to new users.
    path("hooks/users/", pubsubpull.receiver("billing.handlers.welcome")),
    # Push mode of the customers mirror.
    path("hooks/customers/", pubsubpull.receiver("billing.mirrors.customers")),
    # Push mode of the cards mirror (a card's name holds 20 characters).
    path("hooks/cards/", pubsubpull.receiver("billing.mirrors.cards")),
    # Read your writes: changes a customer at customers, then reads the mirror.
    path("invoices/<int:pk>/", views.invoice),
    # Push mode of the filtered mirror (customers in New Zealand).
    path("hooks/nz/", pubsubpull.receiver("billing.mirrors.nz_customers")),
]
